/* c_analyzer: read PPM (P6) / PGM (P5) images with a generated edgereg model; one JSON line each.
 *
 *   build/analyzer well_01.ppm well_02.pgm
 *   {"path": "well_01.ppm", "concentration": 182.406845}
 *   {"path": "well_02.pgm", "error": "truncated: 1200 of 30000 pixel bytes"}
 *
 * Values are in the model's physical units (coordinates in image pixels). Exit status, as
 * `edgereg infer`: 0 when every image was read, 3 when some could not be, 2 on a usage error.
 * On a microcontroller the same call, edgereg_model_predict_rgb888(), takes the camera's buffer. */
#include <math.h>
#include <stdio.h>

#include "model.h"
#include "pnm.h"

/* Writes `text` as a JSON string: quotes, backslashes and control characters escaped. */
static void print_json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; ++c) {
        if (*c == '"' || *c == '\\') {
            printf("\\%c", *c);
        } else if (*c < 0x20) {
            printf("\\u%04x", *c);
        } else {
            putchar(*c);
        }
    }
    putchar('"');
}

/* One image -> one JSON line. Returns 0 when it was read. */
static int analyze(const char *path)
{
    struct pnm_image image;
    char error[160];
    float out[EDGEREG_MODEL_N_OUTPUTS];
    int status = pnm_read(path, &image, error, sizeof(error));
    if (status == 0) {
        const int stride = image.width * image.channels;
        status = image.channels == 3
                     ? edgereg_model_predict_rgb888(image.pixels, image.width, image.height, stride, out)
                     : edgereg_model_predict_gray8(image.pixels, image.width, image.height, stride, out);
        if (status != EDGEREG_MODEL_OK) {
            snprintf(error, sizeof(error), "the model refused the image (error %d)", status);
        }
        pnm_free(&image);
    }
    printf("{\"path\": ");
    print_json_string(path);
    if (status != 0) {
        printf(", \"error\": ");
        print_json_string(error);
    } else {
        for (int t = 0; t < EDGEREG_MODEL_N_OUTPUTS; ++t) {
            printf(", ");
            print_json_string(edgereg_model_output_names[t]);
            if (isfinite(out[t])) {
                printf(": %.9g", out[t]);
            } else {
                printf(": null");
            }
        }
    }
    printf("}\n");
    fflush(stdout);
    return status == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE.ppm|IMAGE.pgm [...]  (one JSON reading per image on stdout)\n", argv[0]);
        return 2;
    }
    int failed = 0;
    for (int i = 1; i < argc; ++i) {
        failed += analyze(argv[i]) != 0;
    }
    return failed ? 3 : 0;
}
