/* The thread pool linked into every compiled CPU library (compiled once by the system C
 * compiler, cached, then linked with the generated object; see graphc/codegen/threads.py).
 *
 * graphc_run calls graphc_parallel_for once per kernel. Small kernels (work below a
 * threshold) run inline on the caller: tiny graphs pay one comparison. Big ones are split
 * into contiguous chunks, at most one per thread, at fixed bounds (the same sums whoever runs
 * a chunk). Threads claim chunks as they come: the caller starts at once, so a worker that
 * the scheduler has not run yet (a busy machine) costs nothing but its share of the work.
 *
 * Workers are started on the first parallel call. After a job they spin briefly (training
 * steps launch kernels back to back), then sleep on a condition variable. One parallel
 * region runs at a time per library; a concurrent caller runs its kernel serially.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))  /* the rest is hidden (-fvisibility) */

/* WebAssembly (wasm32-wasi) has no threads here: kernels run on the caller, one at a time. */
#if defined(__wasm__)
#define GRAPHC_SINGLE_THREAD 1
#endif

typedef void (*graphc_task)(void *ctx, int64_t lo, int64_t hi);

#define MAX_THREADS 256
#ifndef SERIAL_WORK
#define SERIAL_WORK ((int64_t)1 << 17)   /* graphc/codegen/threads.py sets it */
#endif
#define SPIN_NS 50000   /* how long a thread spins for the next job (or the end of one) */

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

#ifndef GRAPHC_SINGLE_THREAD
#include <pthread.h>
#include <sched.h>

static int num_threads;                 /* 0: not decided yet */
static pthread_mutex_t region = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
static int workers;                     /* threads started */
static pid_t owner;                     /* process that started them (fork leaves none) */

static graphc_task job_fn;
static void *job_ctx;
static int64_t job_n, job_quantum;
static int job_parts;
static long generation;                 /* bumped per job (atomic accesses) */
/* The current job's claim word (atomic): job number, then its chunk count and the next
 * chunk to run, PART_BITS each; a chunk is claimed by a compare-and-swap of next + 1. */
#define PART_BITS 10
#define PART_MASK ((1u << PART_BITS) - 1)
static uint64_t claim;
static int done;                        /* chunks of the current job finished (atomic) */

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spinning waits end after SPIN_NS (pause's length varies from ~10 to ~140 cycles between
 * CPUs, so the limit is in time, checked every 64 pauses). */
static int spun_out(int i, int64_t *deadline) {
    if (i & 63)
        return 0;
    int64_t t = now_ns();
    if (*deadline == 0)
        *deadline = t + SPIN_NS;
    return t > *deadline;
}

/* Spins while *flag == value (a new job); returns the last value read. */
static long spin_while_equal(long *flag, long value) {
    int64_t deadline = 0;
    long v = __atomic_load_n(flag, __ATOMIC_ACQUIRE);
    for (int i = 0; v == value && !spun_out(i, &deadline); i++) {
        cpu_relax();
        v = __atomic_load_n(flag, __ATOMIC_ACQUIRE);
    }
    return v;
}

/* Spins while *count != target (the end of a job). */
static void spin_until_equal(int *count, int target) {
    int64_t deadline = 0;
    for (int i = 0; __atomic_load_n(count, __ATOMIC_ACQUIRE) != target &&
         !spun_out(i, &deadline); i++)
        cpu_relax();
}

static int default_threads(void) {
    const char *env = getenv("GRAPHC_NUM_THREADS");
    if (env && *env) {
        int n = atoi(env);
        return n < 1 ? 1 : (n > MAX_THREADS ? MAX_THREADS : n);
    }
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        return n < 1 ? 1 : (n > MAX_THREADS ? MAX_THREADS : n);
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > MAX_THREADS ? MAX_THREADS : (int)n);
}

EXPORT int32_t graphc_get_num_threads(void) {
    int n = __atomic_load_n(&num_threads, __ATOMIC_RELAXED);
    if (n == 0) {
        n = default_threads();
        int zero = 0;
        if (!__atomic_compare_exchange_n(&num_threads, &zero, n, 0, __ATOMIC_RELAXED,
                                         __ATOMIC_RELAXED))
            n = zero;   /* set meanwhile */
    }
    return n;
}

EXPORT void graphc_set_num_threads(int32_t n) {
    /* read once at the start of each parallel call: a running job keeps its split */
    __atomic_store_n(&num_threads, n < 1 ? 1 : (n > MAX_THREADS ? MAX_THREADS : n),
                     __ATOMIC_RELAXED);
}

static void chunk(int part, int parts, int64_t n, int64_t quantum, int64_t *lo, int64_t *hi) {
    int64_t units = (n + quantum - 1) / quantum;
    int64_t a = units * part / parts, b = units * (part + 1) / parts;
    *lo = a * quantum;
    *hi = b * quantum < n ? b * quantum : n;
}

/* A chunk of the current job nobody has claimed yet, or -1. The job's globals were written
 * before its claim word was published, and stay as they are until its last chunk is done. */
static int claim_part(void) {
    uint64_t c = __atomic_load_n(&claim, __ATOMIC_ACQUIRE);
    for (;;) {
        int next = (int)(c & PART_MASK), parts = (int)((c >> PART_BITS) & PART_MASK);
        if (next >= parts)
            return -1;
        if (__atomic_compare_exchange_n(&claim, &c, c + 1, 1, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return next;
    }
}

/* Runs chunks of the current job until none is left to claim. */
static void run_parts(void) {
    int part;
    while ((part = claim_part()) >= 0) {
        int parts = job_parts;
        int64_t lo, hi;
        chunk(part, parts, job_n, job_quantum, &lo, &hi);
        if (lo < hi)
            job_fn(job_ctx, lo, hi);
        if (__atomic_add_fetch(&done, 1, __ATOMIC_ACQ_REL) == parts) {
            pthread_mutex_lock(&lock);
            pthread_cond_signal(&finished);
            pthread_mutex_unlock(&lock);
        }
    }
}

struct worker_start { long seen; };

static void *worker(void *arg) {
    /* `seen` is the generation when this worker was created: a worker added later (more
     * threads, or a fresh pool in a forked child) must not run a job that is already over */
    struct worker_start start = *(struct worker_start *)arg;
    free(arg);
    long seen = start.seen;
    for (;;) {
        long now = spin_while_equal(&generation, seen);
        if (now == seen) {
            pthread_mutex_lock(&lock);
            while ((now = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen)
                pthread_cond_wait(&wake, &lock);
            pthread_mutex_unlock(&lock);
        }
        seen = now;
        run_parts();
    }
    return NULL;
}

/* In a child made by fork() only the forking thread exists: the parent's workers are gone
 * and any lock one of them (or another caller) held stays held. The child starts over with
 * a fresh, empty pool and fresh locks. The runtime calls this in the child (Python's
 * os.register_at_fork); C programs that fork call it in the child before using the library.
 * (pthread_atfork is not used: the library is linked without the C start files it needs,
 * and a handler left registered after dlclose would crash every later fork.) */
EXPORT void graphc_after_fork(void) {
    pthread_mutex_t fresh_mutex = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
    region = fresh_mutex;
    lock = fresh_mutex;
    wake = fresh_cond;
    finished = fresh_cond;
    workers = 0;
    __atomic_store_n(&claim, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&done, 0, __ATOMIC_RELAXED);
    owner = getpid();
}

static int start_workers(int want) {
    if (owner != getpid()) {
        /* first use, or a child after fork (graphc_after_fork resets the locks) */
        workers = 0;
        owner = getpid();
    }
    while (workers < want) {
        struct worker_start *start = malloc(sizeof *start);
        if (!start)
            break;
        start->seen = __atomic_load_n(&generation, __ATOMIC_ACQUIRE);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&t, &attr, worker, start);
        pthread_attr_destroy(&attr);
        if (err != 0) {
            free(start);
            break;
        }
        workers++;
    }
    return workers;
}

/* Runs fn(ctx, lo, hi) over [0, n) in chunks whose bounds are multiples of `quantum`;
 * `work` estimates the cost (about one unit per scalar operation). */
void graphc_parallel_for(graphc_task fn, void *ctx, int64_t n, int64_t quantum, int64_t work) {
    if (work < SERIAL_WORK) {   /* small kernels first: most calls of a tiny graph */
        if (n > 0)
            fn(ctx, 0, n);
        return;
    }
    if (quantum < 1)
        quantum = 1;
    int threads = graphc_get_num_threads();
    int64_t units = (n + quantum - 1) / quantum;
    if (threads <= 1 || units <= 1 || pthread_mutex_trylock(&region) != 0) {
        if (n > 0)
            fn(ctx, 0, n);
        return;
    }
    int parts = units < threads ? (int)units : threads;
    /* each chunk should be worth waking a thread for */
    int64_t by_work = work >> 16;
    if (by_work < parts)
        parts = by_work < 1 ? 1 : (int)by_work;
    int have = start_workers(threads - 1) + 1;
    if (parts > have)
        parts = have;
    if (parts <= 1) {
        pthread_mutex_unlock(&region);
        fn(ctx, 0, n);
        return;
    }
    job_fn = fn;
    job_ctx = ctx;
    job_n = n;
    job_quantum = quantum;
    job_parts = parts;
    __atomic_store_n(&done, 0, __ATOMIC_RELAXED);
    uint64_t job = (__atomic_load_n(&claim, __ATOMIC_RELAXED) >> (2 * PART_BITS)) + 1;
    __atomic_store_n(&claim, (job << (2 * PART_BITS)) | ((uint64_t)parts << PART_BITS),
                     __ATOMIC_RELEASE);
    pthread_mutex_lock(&lock);
    __atomic_add_fetch(&generation, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    run_parts();
    spin_until_equal(&done, parts);
    if (__atomic_load_n(&done, __ATOMIC_ACQUIRE) != parts) {
        pthread_mutex_lock(&lock);
        while (__atomic_load_n(&done, __ATOMIC_ACQUIRE) != parts)
            pthread_cond_wait(&finished, &lock);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_unlock(&region);
}

#else   /* GRAPHC_SINGLE_THREAD */

EXPORT int32_t graphc_get_num_threads(void) { return 1; }
EXPORT void graphc_set_num_threads(int32_t n) { (void)n; }
EXPORT void graphc_after_fork(void) {}

void graphc_parallel_for(graphc_task fn, void *ctx, int64_t n, int64_t quantum, int64_t work) {
    (void)quantum;
    (void)work;
    if (n > 0)
        fn(ctx, 0, n);
}
#endif

/* Monotonic nanoseconds: the timestamps an instrumented build (Compiled.profile) takes
 * around each kernel. */
int64_t graphc_clock_ns(void) { return now_ns(); }

/* Kernels report failures (out of memory) here; graphc_run returns the first one. */
static int error_status;

void graphc_fail(int32_t status) {
    int zero = 0;
    __atomic_compare_exchange_n(&error_status, &zero, status, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

int32_t graphc_take_error(void) { return __atomic_exchange_n(&error_status, 0, __ATOMIC_ACQ_REL); }

/* A per-thread scratch buffer (64-byte aligned, at least `bytes`), kept between calls so
 * steady-state calls allocate nothing; valid until the same thread asks again. Freed when
 * the thread exits. Returns NULL if memory runs out. */
struct scratch { void *data; int64_t bytes; };

#ifndef GRAPHC_SINGLE_THREAD
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
    struct scratch *s = p;
    free(s->data);
    free(s);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static struct scratch *thread_scratch(void) {
    pthread_once(&scratch_once, scratch_init);
    struct scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (s)
            pthread_setspecific(scratch_key, s);
    }
    return s;
}
#else
static struct scratch *thread_scratch(void) {
    static struct scratch only;
    return &only;
}
#endif

void *graphc_scratch(int64_t bytes) {
    struct scratch *s = thread_scratch();
    if (!s)
        return NULL;
    if (s->bytes < bytes) {
        void *p = NULL;
        int64_t want = bytes + (bytes >> 2);
        if (posix_memalign(&p, 64, (size_t)want) != 0)
            return NULL;
        free(s->data);
        s->data = p;
        s->bytes = want;
    }
    return s->data;
}
