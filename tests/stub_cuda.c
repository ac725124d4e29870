/* A stand-in libcuda for machines without a GPU: the driver calls graphc_runtime/cuda.py
 * makes, with the prototypes of cuda.h, built as a real shared library so the runtime's
 * cffi ABI path (dlopen, argument conversion, out-parameters) runs exactly as against the
 * driver. Device memory is host memory; a loaded module must be PTX text (NUL-terminated,
 * with .version, .target and .entry), functions are found by their .entry in it, and each
 * launch is handed to a hook (the test runs the kernel's simulated build there) with the
 * module's PTX and the number of .param the entry declares. No CUDA header is needed to build it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_CONTEXT = 201,
       INVALID_PTX = 218, INVALID_HANDLE = 400, NOT_FOUND = 500 };

struct module { char *ptx; };
struct function { char name[256]; int nparams; struct module *module; };
typedef int (*launch_hook)(const char *ptx, const char *name, int nparams, unsigned gx,
                           unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, void **params);

static int initialized;
static __thread int context_current;   /* as the driver's: per thread */
static size_t fail_over = (size_t)-1;
static launch_hook hook;
static const int context_token = 1;

void stub_set_launch_hook(launch_hook h) { hook = h; }
void stub_fail_alloc_over(size_t nbytes) { fail_over = nbytes; }

CUresult cuInit(unsigned int flags) { if (flags) return INVALID_VALUE; initialized = 1; return OK; }
CUresult cuDriverGetVersion(int *v) { if (!v) return INVALID_VALUE; *v = 13000; return OK; }
CUresult cuDeviceGetCount(int *n) {
    if (!initialized) return NOT_INITIALIZED;
    if (!n) return INVALID_VALUE;
    *n = 1;
    return OK;
}
CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    if (!initialized) return NOT_INITIALIZED;
    if (!d || ordinal != 0) return INVALID_VALUE;
    *d = 0;
    return OK;
}
CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    const char *s = "Stub GPU (host memory, simulated kernels)";
    if (!name || len < 1 || d != 0) return INVALID_VALUE;
    strncpy(name, s, (size_t)len - 1);
    name[len - 1] = 0;
    return OK;
}
CUresult cuDeviceGetAttribute(int *v, int attrib, CUdevice d) {
    if (!v || d != 0) return INVALID_VALUE;
    *v = attrib == 75 ? 9 : 0;   /* compute capability 9.0 */
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
    if (!initialized) return NOT_INITIALIZED;
    if (!ctx || d != 0) return INVALID_VALUE;
    *ctx = (void *)&context_token;
    return OK;
}
CUresult cuCtxSetCurrent(void *ctx) {
    if (ctx != &context_token) return INVALID_CONTEXT;
    context_current = 1;
    return OK;
}
CUresult cuCtxSynchronize(void) { return context_current ? OK : INVALID_CONTEXT; }

static void write_log(unsigned n, int *options, void **values, const char *text) {
    for (unsigned i = 0; i < n; i++)   /* CU_JIT_ERROR_LOG_BUFFER(_SIZE_BYTES) = 5, 6 */
        if (options[i] == 5)
            for (unsigned j = 0; j < n; j++)
                if (options[j] == 6 && (size_t)values[j] > 0) {
                    size_t cap = (size_t)values[j];
                    strncpy((char *)values[i], text, cap - 1);
                    ((char *)values[i])[cap - 1] = 0;
                }
}

CUresult cuModuleLoadDataEx(void **module, const void *image, unsigned int n, int *options,
                            void **values) {
    const char *ptx = image;
    if (!context_current) return INVALID_CONTEXT;
    if (!module || !image || (n && (!options || !values))) return INVALID_VALUE;
    if (!strstr(ptx, ".version") || !strstr(ptx, ".target") || !strstr(ptx, ".entry")) {
        write_log(n, options, values, "stub driver: not PTX (no .version/.target/.entry)");
        return INVALID_PTX;
    }
    struct module *m = malloc(sizeof *m);
    m->ptx = strdup(ptx);
    *module = m;
    return OK;
}

CUresult cuModuleGetFunction(void **fn, void *module, const char *name) {
    struct module *m = module;
    if (!context_current) return INVALID_CONTEXT;
    if (!fn || !m || !name || strlen(name) >= 255) return INVALID_VALUE;
    char key[300];
    snprintf(key, sizeof key, ".entry %s(", name);
    const char *at = strstr(m->ptx, key);
    if (!at) return NOT_FOUND;
    const char *end = strchr(at, ')');
    struct function *f = malloc(sizeof *f);
    strcpy(f->name, name);
    f->module = m;
    f->nparams = 0;
    for (const char *p = at; end && (p = strstr(p, ".param")) && p < end; p++) f->nparams++;
    *fn = f;
    return OK;
}

/* Device memory: fresh mappings filled with 0xff (the driver's memory holds stale data, so
 * a kernel that counts on zeroed memory reads NaN here), 256-byte aligned as the driver's,
 * and ending where an inaccessible page begins, so a read or write past the allocation
 * (rounded up to 256 bytes) faults instead of passing unnoticed. */
struct mapping { uintptr_t ptr; void *base; size_t length; };
static struct mapping *maps;
static size_t n_maps, cap_maps;

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t nbytes) {
    if (!context_current) return INVALID_CONTEXT;
    if (!ptr || nbytes == 0) return INVALID_VALUE;   /* as the driver: no empty allocations */
    if (nbytes > fail_over) return OUT_OF_MEMORY;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), used = (nbytes + 255) & ~(size_t)255;
    size_t data = (used + page - 1) / page * page, length = data + page;
    char *base = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return OUT_OF_MEMORY;
    if (mprotect(base + data, page, PROT_NONE)) { munmap(base, length); return OUT_OF_MEMORY; }
    if (n_maps == cap_maps) {
        struct mapping *grown = realloc(maps, (cap_maps = cap_maps * 2 + 16) * sizeof *maps);
        if (!grown) { munmap(base, length); return OUT_OF_MEMORY; }
        maps = grown;
    }
    char *p = base + data - used;
    memset(p, 0xff, used);
    maps[n_maps++] = (struct mapping){(uintptr_t)p, base, length};
    *ptr = (CUdeviceptr)(uintptr_t)p;
    return OK;
}
CUresult cuMemFree_v2(CUdeviceptr ptr) {
    if (!context_current) return INVALID_CONTEXT;
    for (size_t i = 0; i < n_maps; i++)
        if (maps[i].ptr == ptr) {
            munmap(maps[i].base, maps[i].length);
            maps[i] = maps[--n_maps];
            return OK;
        }
    return INVALID_VALUE;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t nbytes) {
    if (!context_current) return INVALID_CONTEXT;
    if (!dst || !src) return INVALID_VALUE;
    memcpy((void *)(uintptr_t)dst, src, nbytes);
    return OK;
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t nbytes) {
    if (!context_current) return INVALID_CONTEXT;
    if (!dst || !src) return INVALID_VALUE;
    memcpy(dst, (const void *)(uintptr_t)src, nbytes);
    return OK;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t nbytes) {
    if (!context_current) return INVALID_CONTEXT;
    if (!dst || !src) return INVALID_VALUE;
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, nbytes);
    return OK;
}

CUresult cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, void *stream, void **params,
                        void **extra) {
    struct function *f = fn;
    if (!context_current) return INVALID_CONTEXT;
    if (!f) return INVALID_HANDLE;
    if (!gx || !gy || !gz || !bx || !by || !bz || bx * by * bz > 1024 || gx > 2147483647u ||
        gy > 65535 || gz > 65535 || (f->nparams && !params) || extra)
        return INVALID_VALUE;
    (void)stream;
    return hook ? hook(f->module->ptx, f->name, f->nparams, gx, gy, gz, bx, by, bz, shared,
                       params) : OK;
}

/* Events: launches run synchronously here, so recording one reads the host's monotonic clock,
 * and an event is complete as soon as it is recorded. The counts let tests check that events
 * are made once and waited for once per call. */
struct event { double ms; int recorded; };
static long events_created, events_live, event_syncs;

void stub_event_counts(long *created, long *live, long *syncs) {
    *created = events_created;
    *live = events_live;
    *syncs = event_syncs;
}

CUresult cuEventCreate(void **event, unsigned int flags) {
    if (!context_current) return INVALID_CONTEXT;
    if (!event || flags > 0xf) return INVALID_VALUE;
    struct event *e = calloc(1, sizeof *e);
    if (!e) return OUT_OF_MEMORY;
    events_created++;
    events_live++;
    *event = e;
    return OK;
}
CUresult cuEventRecord(void *event, void *stream) {
    struct event *e = event;
    struct timespec now;
    if (!context_current) return INVALID_CONTEXT;
    if (!e || stream) return INVALID_HANDLE;   /* graphc uses the default stream only */
    clock_gettime(CLOCK_MONOTONIC, &now);
    e->ms = now.tv_sec * 1e3 + now.tv_nsec / 1e6;
    e->recorded = 1;
    return OK;
}
CUresult cuEventSynchronize(void *event) {
    if (!context_current) return INVALID_CONTEXT;
    if (!event) return INVALID_HANDLE;
    event_syncs++;
    return OK;
}
CUresult cuEventElapsedTime_v2(float *ms, void *start, void *end) {
    struct event *a = start, *b = end;
    if (!context_current) return INVALID_CONTEXT;
    if (!ms) return INVALID_VALUE;
    if (!a || !b || !a->recorded || !b->recorded) return INVALID_HANDLE;
    *ms = (float)(b->ms - a->ms);
    return OK;
}
CUresult cuEventElapsedTime(float *ms, void *start, void *end) {
    return cuEventElapsedTime_v2(ms, start, end);
}
CUresult cuEventDestroy_v2(void *event) {
    if (!context_current) return INVALID_CONTEXT;
    if (!event) return INVALID_HANDLE;
    free(event);
    events_live--;
    return OK;
}

static const char *names[][2] = {
    {"CUDA_SUCCESS", "no error"}, {"CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {"CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {"CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {"CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {"CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {"CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {"CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {"CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"}};
static const int codes[] = {OK, INVALID_VALUE, OUT_OF_MEMORY, NOT_INITIALIZED, INVALID_CONTEXT,
                            INVALID_PTX, INVALID_HANDLE, NOT_FOUND, 719};

static CUresult lookup(CUresult code, const char **out, int which) {
    if (!out) return INVALID_VALUE;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i] == code) { *out = names[i][which]; return OK; }
    *out = NULL;
    return INVALID_VALUE;
}
CUresult cuGetErrorName(CUresult code, const char **out) { return lookup(code, out, 0); }
CUresult cuGetErrorString(CUresult code, const char **out) { return lookup(code, out, 1); }
