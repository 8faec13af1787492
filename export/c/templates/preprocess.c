/* Preprocessing: a camera frame -> the model's normalized (PRE_IN_C, PRE_IN_H, PRE_IN_W) input.
 *
 * The same steps, in the same order, as edgereg's runtime (edgereg.preprocess):
 * 1. crop: the card's fixed ROI square, the largest centred square, or the whole frame; parts of
 *    the crop outside the frame are black;
 * 2. resize to the model input: area averaging when the crop is at least the input size in both
 *    directions (OpenCV INTER_AREA weights: each output pixel averages the crop cells it covers,
 *    weighted by overlap), bilinear otherwise (OpenCV INTER_LINEAR sample positions
 *    (x + 0.5) * scale - 0.5, clamped to the border); each resized channel is rounded to the nearest
 *    integer level as OpenCV's uint8 output is (so results agree with the runtime to one level);
 * 3. gray models: 0.299 R + 0.587 G + 0.114 B (no rounding);
 * 4. normalization: pixel * norm_scale[c] + norm_offset[c] = (pixel / 255 - mean[c]) / std[c];
 * 5. circle mask: pixels with (x - (W-1)/2)^2 + (y - (H-1)/2)^2 > (min(H, W)/2)^2 get PRE_FILL.
 *
 * The generator defines PRE_IN_C, PRE_IN_H, PRE_IN_W, PRE_CROP_MODE (PRE_CROP_NONE, PRE_CROP_CENTER
 * or PRE_CROP_ROI with PRE_ROI_X0, PRE_ROI_Y0, PRE_ROI_SIDE), PRE_CIRCLE_MASK, PRE_FILL and the
 * arrays norm_scale / norm_offset before this fragment. */

/* The frame region the model sees, in frame pixels: columns x0 .. x0 + w - 1, rows y0 .. y0 + h - 1. */
struct crop_box {
    int x0, y0, w, h;
};

/* A frame in memory: `height` rows of `stride` bytes; `channels` bytes per pixel (3: R, G, B; 1: gray). */
struct frame {
    const uint8_t *pixels;
    int width, height, stride, channels;
};

static struct crop_box crop_box_for(int width, int height)
{
    struct crop_box box;
#if PRE_CROP_MODE == PRE_CROP_ROI
    (void)width;
    (void)height;
    box.x0 = PRE_ROI_X0;
    box.y0 = PRE_ROI_Y0;
    box.w = PRE_ROI_SIDE;
    box.h = PRE_ROI_SIDE;
#elif PRE_CROP_MODE == PRE_CROP_CENTER
    const int side = width < height ? width : height;
    box.x0 = (width - side) / 2;
    box.y0 = (height - side) / 2;
    box.w = side;
    box.h = side;
#else
    box.x0 = 0;
    box.y0 = 0;
    box.w = width;
    box.h = height;
#endif
    return box;
}

/* Channel c (0 R, 1 G, 2 B) of crop pixel (rx, ry); black outside the frame; gray frames give the
 * same value for every channel. */
static inline double crop_pixel(const struct frame *f, const struct crop_box *box, int rx, int ry, int c)
{
    const int x = box->x0 + rx;
    const int y = box->y0 + ry;
    if (x < 0 || y < 0 || x >= f->width || y >= f->height) {
        return 0.0;
    }
    const uint8_t *pixel = f->pixels + (size_t)y * (size_t)f->stride + (size_t)x * (size_t)f->channels;
    return (double)pixel[f->channels == 3 ? c : 0];
}

/* INTER_AREA: the overlap-weighted mean of the crop cells under output pixel (ox, oy). */
static void area_pixel(const struct frame *f, const struct crop_box *box, int ox, int oy, double rgb[3])
{
    const double scale_x = (double)box->w / PRE_IN_W;
    const double scale_y = (double)box->h / PRE_IN_H;
    const double x_start = ox * scale_x, x_end = x_start + scale_x;
    const double y_start = oy * scale_y, y_end = y_start + scale_y;
    const int rx_end = (int)ceil(x_end) < box->w ? (int)ceil(x_end) : box->w;
    const int ry_end = (int)ceil(y_end) < box->h ? (int)ceil(y_end) : box->h;
    double sum[3] = {0.0, 0.0, 0.0};
    double total = 0.0;
    for (int ry = (int)floor(y_start); ry < ry_end; ++ry) {
        const double wy = fmin(ry + 1.0, y_end) - fmax((double)ry, y_start);
        for (int rx = (int)floor(x_start); rx < rx_end; ++rx) {
            const double w = wy * (fmin(rx + 1.0, x_end) - fmax((double)rx, x_start));
            total += w;
            for (int c = 0; c < 3; ++c) {
                sum[c] += w * crop_pixel(f, box, rx, ry, c);
            }
        }
    }
    for (int c = 0; c < 3; ++c) {
        rgb[c] = nearbyint(sum[c] / total);
    }
}

/* INTER_LINEAR: bilinear interpolation at ((ox + 0.5) * scale - 0.5, (oy + 0.5) * scale - 0.5). */
static void bilinear_pixel(const struct frame *f, const struct crop_box *box, int ox, int oy, double rgb[3])
{
    double fx = (ox + 0.5) * ((double)box->w / PRE_IN_W) - 0.5;
    double fy = (oy + 0.5) * ((double)box->h / PRE_IN_H) - 0.5;
    int x0 = (int)floor(fx);
    int y0 = (int)floor(fy);
    fx -= x0;
    fy -= y0;
    if (x0 < 0) {
        x0 = 0;
        fx = 0.0;
    }
    if (x0 >= box->w - 1) {
        x0 = box->w - 1;
        fx = 0.0;
    }
    if (y0 < 0) {
        y0 = 0;
        fy = 0.0;
    }
    if (y0 >= box->h - 1) {
        y0 = box->h - 1;
        fy = 0.0;
    }
    const int x1 = x0 + 1 < box->w ? x0 + 1 : x0;
    const int y1 = y0 + 1 < box->h ? y0 + 1 : y0;
    for (int c = 0; c < 3; ++c) {
        const double top = (1.0 - fx) * crop_pixel(f, box, x0, y0, c) + fx * crop_pixel(f, box, x1, y0, c);
        const double bottom = (1.0 - fx) * crop_pixel(f, box, x0, y1, c) + fx * crop_pixel(f, box, x1, y1, c);
        rgb[c] = nearbyint((1.0 - fy) * top + fy * bottom);
    }
}

/* Writes the normalized (PRE_IN_C, PRE_IN_H, PRE_IN_W) input for frame f; returns its crop box. */
static struct crop_box preprocess_frame(const struct frame *f, float *input)
{
    const struct crop_box box = crop_box_for(f->width, f->height);
    const int shrinking = box.w >= PRE_IN_W && box.h >= PRE_IN_H;
#if PRE_IN_C > 1 || PRE_CIRCLE_MASK
    const size_t plane = (size_t)PRE_IN_H * PRE_IN_W;
#endif
#if PRE_CIRCLE_MASK
    const double cx = (PRE_IN_W - 1) / 2.0, cy = (PRE_IN_H - 1) / 2.0;
    const double radius = (PRE_IN_H < PRE_IN_W ? PRE_IN_H : PRE_IN_W) / 2.0;
#endif
    for (int oy = 0; oy < PRE_IN_H; ++oy) {
        for (int ox = 0; ox < PRE_IN_W; ++ox) {
            const size_t at = (size_t)oy * PRE_IN_W + (size_t)ox;
#if PRE_CIRCLE_MASK
            if ((ox - cx) * (ox - cx) + (oy - cy) * (oy - cy) > radius * radius) {
                for (int c = 0; c < PRE_IN_C; ++c) {
                    input[c * plane + at] = PRE_FILL;
                }
                continue;
            }
#endif
            double rgb[3];
            if (shrinking) {
                area_pixel(f, &box, ox, oy, rgb);
            } else {
                bilinear_pixel(f, &box, ox, oy, rgb);
            }
#if PRE_IN_C == 1
            const double luma = 0.114 * rgb[2] + 0.587 * rgb[1] + 0.299 * rgb[0];
            input[at] = (float)(luma * norm_scale[0] + norm_offset[0]);
#else
            for (int c = 0; c < 3; ++c) {
                input[c * plane + at] = (float)(rgb[c] * norm_scale[c] + norm_offset[c]);
            }
#endif
        }
    }
    return box;
}
