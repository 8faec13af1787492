/* A strict reader of binary PPM (P6) and PGM (P5) files with maxval <= 255 (netpbm format). */
#include "pnm.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The next header integer: skips whitespace and '#' comments. Returns -1 when there is none. */
static long header_number(FILE *file)
{
    int c = fgetc(file);
    while (c == '#' || isspace(c)) {
        if (c == '#') {
            while (c != '\n' && c != EOF) {
                c = fgetc(file);
            }
        }
        c = fgetc(file);
    }
    if (!isdigit(c)) {
        return -1;
    }
    long value = 0;
    while (isdigit(c)) {
        value = value * 10 + (c - '0');
        if (value > 1000000) {
            return -1;
        }
        c = fgetc(file);
    }
    if (!isspace(c)) {  /* exactly one whitespace byte ends the last header field */
        return -1;
    }
    return value;
}

int pnm_read(const char *path, struct pnm_image *image, char *error, size_t error_size)
{
    memset(image, 0, sizeof(*image));
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        snprintf(error, error_size, "cannot open: %s", strerror(errno));
        return -1;
    }
    char magic[2];
    if (fread(magic, 1, 2, file) != 2 || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6')) {
        snprintf(error, error_size, "not a binary PPM (P6) or PGM (P5) image");
        fclose(file);
        return -1;
    }
    const long width = header_number(file), height = header_number(file), maxval = header_number(file);
    if (width < 1 || height < 1 || maxval < 1) {
        snprintf(error, error_size, "malformed PPM/PGM header");
        fclose(file);
        return -1;
    }
    if (maxval > 255) {
        snprintf(error, error_size, "16-bit samples (maxval %ld) are not supported; write 8-bit images", maxval);
        fclose(file);
        return -1;
    }
    image->width = (int)width;
    image->height = (int)height;
    image->channels = magic[1] == '6' ? 3 : 1;
    const size_t size = (size_t)width * (size_t)height * (size_t)image->channels;
    image->pixels = malloc(size);
    if (image->pixels == NULL) {
        snprintf(error, error_size, "out of memory for a %ldx%ld image", width, height);
        fclose(file);
        return -1;
    }
    const size_t got = fread(image->pixels, 1, size, file);
    fclose(file);
    if (got != size) {
        snprintf(error, error_size, "truncated: %zu of %zu pixel bytes", got, size);
        pnm_free(image);
        return -1;
    }
    if (maxval != 255) {  /* rescale to 0..255 like any 8-bit image */
        for (size_t i = 0; i < size; ++i) {
            image->pixels[i] = (uint8_t)((image->pixels[i] * 255L + maxval / 2) / maxval);
        }
    }
    return 0;
}

void pnm_free(struct pnm_image *image)
{
    free(image->pixels);
    image->pixels = NULL;
}
