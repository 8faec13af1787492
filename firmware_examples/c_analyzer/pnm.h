/* Binary PPM (P6, RGB) and PGM (P5, gray) images with 8-bit samples: the simplest formats a camera
 * pipeline or `convert photo.jpg photo.ppm` (ImageMagick) can write. */
#ifndef PNM_H
#define PNM_H

#include <stddef.h>
#include <stdint.h>

struct pnm_image {
    int width, height;
    int channels;     /* 3: R, G, B (P6); 1: gray (P5) */
    uint8_t *pixels;  /* height rows of width * channels bytes, no padding; free with pnm_free */
};

/* Reads `path` into `image`. Returns 0, or -1 with a one-line reason in `error`. */
int pnm_read(const char *path, struct pnm_image *image, char *error, size_t error_size);

void pnm_free(struct pnm_image *image);

#endif /* PNM_H */
