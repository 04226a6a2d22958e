/* A C program embedding seamless through its C ABI (include/seamless.h), run by tests/c_abi.rs:
 *   embed MODEL PROBS_OUT LABELS_OUT
 * segments a generated image in memory and writes the probabilities (raw floats) to PROBS_OUT,
 * segments synth:70x50 to the file LABELS_OUT, and checks the error and cancellation paths.
 * Exits 0 when every check passes, else prints what failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seamless.h"

static int fail(const char *what, int32_t rc, char *error) {
    fprintf(stderr, "%s: rc %d: %s\n", what, rc, error ? error : "(no message)");
    seamless_string_free(error);
    return 1;
}

static int32_t count_tiles(uint64_t done, uint64_t total, void *user) {
    (void)total;
    *(uint64_t *)user = done;
    return 0;
}

static int32_t cancel_at_once(uint64_t done, uint64_t total, void *user) {
    (void)done;
    (void)total;
    (void)user;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: embed MODEL PROBS_OUT LABELS_OUT\n");
        return 2;
    }
    char *error = NULL;

    /* A model that does not exist: NULL, exit code 3's message. */
    SeamlessEngine *none = seamless_engine_open("no-such-model.safetensors", -1, 0, 0, 0, &error);
    if (none != NULL || error == NULL || strstr(error, "no-such-model") == NULL) return fail("missing model", 0, error);
    seamless_string_free(error);
    error = NULL;

    /* The CPU, 2 threads, a 1 MiB budget: the image is cut into several tiles. */
    SeamlessEngine *engine = seamless_engine_open(argv[1], -1, 0, 1u << 20, 2, &error);
    if (engine == NULL) return fail("open", 0, error);
    uint32_t c = seamless_engine_in_channels(engine), k = seamless_engine_classes(engine);
    const uint32_t h = 97, w = 131;
    float *image = malloc(sizeof(float) * c * h * w);
    float *probs = malloc(sizeof(float) * k * h * w);
    for (uint32_t i = 0; i < c * h * w; i++) image[i] = (float)((i * 7919u) % 251u);

    uint64_t tiles = 0;
    int32_t rc = seamless_segment(engine, image, c, h, w, probs, count_tiles, &tiles, &error);
    if (rc != 0) return fail("segment", rc, error);
    if (tiles < 2) return fail("segment: expected several tiles under a 1 MiB budget", (int32_t)tiles, NULL);
    FILE *f = fopen(argv[2], "wb");
    if (f == NULL || fwrite(probs, sizeof(float), k * h * w, f) != k * h * w || fclose(f) != 0) return fail("write", 0, NULL);

    /* The wrong channel count is refused with a message, not a crash. */
    rc = seamless_segment(engine, image, c + 1, h, w, probs, NULL, NULL, &error);
    if (rc == 0 || error == NULL) return fail("wrong channels accepted", rc, error);
    seamless_string_free(error);
    error = NULL;

    /* A callback that cancels: exit code 130. */
    rc = seamless_segment(engine, image, c, h, w, probs, cancel_at_once, NULL, &error);
    if (rc != 130) return fail("cancel", rc, error);
    seamless_string_free(error);
    error = NULL;

    /* From a (generated) slide to a file. */
    rc = seamless_run_file(engine, "synth:70x50", argv[3], 0, 1, NULL, NULL, &error);
    if (rc != 0) return fail("run_file", rc, error);

    free(image);
    free(probs);
    seamless_engine_free(engine);
    return 0;
}
