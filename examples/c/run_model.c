/* Runs a graphc model from C, without Python.
 *
 *   graphc unpack model.gcx model/          # graph.so, graphc_model.h, weights/<k>.bin
 *   cc -I model examples/c/run_model.c -ldl -o run_model
 *   ./run_model model/ BATCH input0.bin [input1.bin ...]
 *
 * Or statically, the model's object file linked in (-DGRAPHC_STATIC; tests/test_aarch64.py
 * builds it so for aarch64-linux-musl and runs it under qemu-aarch64):
 *   zig cc -target aarch64-linux-musl -static -DGRAPHC_STATIC -I model run_model.c \
 *       graph.o threads.c -o run_model
 *
 * Inputs are raw C-order arrays (numpy: arr.tofile("input0.bin")); every symbolic dim is set
 * to BATCH. The outputs are printed as text, one number per line.
 */
#ifndef GRAPHC_STATIC
#include <dlfcn.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graphc_model.h"

static void *read_file(const char *path, int64_t bytes) {
    void *data = aligned_alloc(64, (size_t)((bytes + 63) / 64 * 64 + 64));
    FILE *f = fopen(path, "rb");
    if (!data || !f || fread(data, 1, (size_t)bytes, f) != (size_t)bytes) {
        fprintf(stderr, "cannot read %lld bytes from %s\n", (long long)bytes, path);
        exit(1);
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 3 + GRAPHC_MODEL_NUM_INPUTS) {
        fprintf(stderr, "usage: %s MODEL_DIR BATCH input.bin x %d\n", argv[0],
                GRAPHC_MODEL_NUM_INPUTS);
        return 2;
    }
    char path[4096];
#ifdef GRAPHC_STATIC
    /* the model's object linked into this program (no dlopen: a static executable) */
    int32_t graphc_abi_version(void);
    int64_t graphc_workspace_size(const int64_t *);
    int32_t graphc_run(void **, void *, const int64_t *);
    int32_t (*abi)(void) = graphc_abi_version;
    int64_t (*workspace_size)(const int64_t *) = graphc_workspace_size;
    int32_t (*run)(void **, void *, const int64_t *) = graphc_run;
    snprintf(path, sizeof path, "%s", argv[0]);
#else
    snprintf(path, sizeof path, "%s/graph.so", argv[1]);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int32_t (*abi)(void) = (int32_t (*)(void))dlsym(lib, "graphc_abi_version");
    int64_t (*workspace_size)(const int64_t *) =
        (int64_t (*)(const int64_t *))dlsym(lib, "graphc_workspace_size");
    int32_t (*run)(void **, void *, const int64_t *) =
        (int32_t (*)(void **, void *, const int64_t *))dlsym(lib, "graphc_run");
#endif
    if (!abi || !workspace_size || !run || abi() != GRAPHC_ABI_VERSION) {
        fprintf(stderr, "%s is not a graphc model of ABI %d\n", path, GRAPHC_ABI_VERSION);
        return 1;
    }
    int64_t dims[GRAPHC_MODEL_NUM_DIMS + 1];
    for (int i = 0; i < GRAPHC_MODEL_NUM_DIMS; i++) dims[i] = atoll(argv[2]);

    void *buffers[GRAPHC_MODEL_NUM_BUFFERS];
    int b = 0;
    for (int i = 0; i < GRAPHC_MODEL_NUM_INPUTS; i++)  /* float32 inputs in this example */
        buffers[b++] = read_file(argv[3 + i], 4 * graphc_model_input_elements(i, dims));
    for (int k = 0; k < GRAPHC_MODEL_NUM_CONSTANTS; k++) {
        snprintf(path, sizeof path, "%s/weights/%d.bin", argv[1], k);
        buffers[b++] = read_file(path, graphc_model_constant_bytes[k]);
    }
    float *outputs[GRAPHC_MODEL_NUM_OUTPUTS];
    for (int k = 0; k < GRAPHC_MODEL_NUM_OUTPUTS; k++)
        buffers[b++] = outputs[k] = calloc((size_t)graphc_model_output_elements(k, dims) + 1, 4);
    void *workspace = aligned_alloc(64, (size_t)(workspace_size(dims) + 64));

    if (run(buffers, workspace, dims) != 0) { fprintf(stderr, "graphc_run failed\n"); return 1; }
    for (int k = 0; k < GRAPHC_MODEL_NUM_OUTPUTS; k++)
        for (int64_t i = 0; i < graphc_model_output_elements(k, dims); i++)
            printf("%.9g\n", outputs[k][i]);
    return 0;
}
