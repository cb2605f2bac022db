/* benchmarks/plain_ring.c -- a minimal plain-C SPSC ring of 8-byte records,
 * the baseline for reflux's RecordChannel in benchmarks/channels.py.
 *
 * Compiled at benchmark time (cc -O2 -shared -fPIC -pthread) and driven
 * through ctypes.  Deliberately minimal, i.e. the fastest honest SPSC ring:
 *   - power-of-two capacity, 64-bit free-running positions;
 *   - producer-written and consumer-written fields 128 bytes apart;
 *   - each side caches the other side's position and reloads it only when
 *     the cached view says there is not enough room / data;
 *   - acquire/release only (no seq_cst, no close bit in the position, no
 *     parking): a waiting side busy-waits with a pause instruction (and a
 *     rare sched_yield, see PR_WAIT).
 *
 * The workload mirrors reflux_core/_stress.pyx exactly, so the two differ
 * only in the ring: each record is (producer << 32 | seq), a producer pushes
 * batches of `batch` records (batch 1 is the per-record path), the consumer
 * pops up to `batch` at a time and keeps the same per-producer tally
 * (count, sum, order check).
 *
 * Two drivers:
 *   pr_run_threads  starts its own producer and consumer pthreads and returns
 *                   the elapsed ns from before the first pthread_create to
 *                   after the last join: the counterpart of _stress.run_native,
 *                   which also starts native threads and times them from the
 *                   outside.  This is the baseline of the nogil target.
 *   pr_produce / pr_consume  one side each, called from two Python threads
 *                   through ctypes (which releases the GIL during the call):
 *                   the counterpart of _stress.produce / _stress.consume.
 *
 * GCC/Clang only (__atomic builtins, pthreads).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#  define PR_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#  define PR_PAUSE() __asm__ __volatile__("yield" ::: "memory")
#else
#  define PR_PAUSE() __asm__ __volatile__("" ::: "memory")
#endif

/* Busy-wait step: a pause instruction, and every PR_YIELD_EVERY pauses (tens
 * of microseconds) a sched_yield.  The yield never fires while both threads
 * have a core to themselves and keep up; it only keeps the ring from
 * collapsing when other load on a 2-core box puts both threads on one core
 * (a pure spin then burns whole time slices waiting for a thread that cannot
 * run: a run of 0.5 M records/s was seen that way instead of ~70 M). */
#define PR_YIELD_EVERY 1024
#define PR_WAIT(spins) \
    do { PR_PAUSE(); if (++(spins) % PR_YIELD_EVERY == 0) sched_yield(); } while (0)

#define PR_LINE 128
#define PR_MAX_PRODUCERS 64

typedef struct pr_ring {
    /* read-only after creation */
    uint64_t *buf;
    uint64_t mask;
    uint64_t capacity;
    char _pad0[PR_LINE - 3 * sizeof(uint64_t)];
    /* producer line */
    uint64_t tail;        /* next position to write; release-stored by the producer */
    uint64_t head_cache;  /* producer-private copy of head */
    uint32_t closed;      /* set (release) by the producer after its last push */
    char _pad1[PR_LINE - 2 * sizeof(uint64_t) - sizeof(uint32_t)];
    /* consumer line */
    uint64_t head;        /* next position to read; release-stored by the consumer */
    uint64_t tail_cache;  /* consumer-private copy of tail */
    char _pad2[PR_LINE - 2 * sizeof(uint64_t)];
} pr_ring;

/* Same layout as the Tally of reflux_core/_stress.pyx. */
typedef struct pr_tally {
    uint64_t count;
    uint64_t order_errors;
    uint64_t bad_producer;
    uint64_t counts[PR_MAX_PRODUCERS];
    uint64_t sums[PR_MAX_PRODUCERS];
    int64_t last[PR_MAX_PRODUCERS];
} pr_tally;

pr_ring *pr_ring_new(uint64_t capacity) {
    pr_ring *r;
    uint64_t cap = 1;
    void *p = NULL;
    while (cap < capacity) cap <<= 1;
    if (posix_memalign(&p, PR_LINE, sizeof(pr_ring)) != 0) return NULL;
    r = (pr_ring *)p;
    memset(r, 0, sizeof(*r));
    p = NULL;
    if (posix_memalign(&p, PR_LINE, cap * sizeof(uint64_t)) != 0) { free(r); return NULL; }
    r->buf = (uint64_t *)p;
    memset(r->buf, 0, cap * sizeof(uint64_t));
    r->capacity = cap;
    r->mask = cap - 1;
    return r;
}

void pr_ring_free(pr_ring *r) {
    if (!r) return;
    free(r->buf);
    free(r);
}

/* Producer: push all n records, busy-waiting for room. */
static void pr_push(pr_ring *r, const uint64_t *src, uint64_t n) {
    uint64_t t = r->tail;  /* only this thread writes tail */
    unsigned spins = 0;
    while (n) {
        uint64_t room = r->capacity - (t - r->head_cache);
        uint64_t k, at, first;
        if (room < n) {
            /* acquire: pairs with the consumer's release store of head, so
             * the slots it freed are no longer being read */
            r->head_cache = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
            room = r->capacity - (t - r->head_cache);
            if (room == 0) { PR_WAIT(spins); continue; }
        }
        k = n < room ? n : room;
        at = t & r->mask;
        first = r->capacity - at;
        if (first > k) first = k;
        memcpy(r->buf + at, src, first * sizeof(uint64_t));
        if (k > first) memcpy(r->buf, src + first, (k - first) * sizeof(uint64_t));
        t += k;
        /* release: publishes the slots; pairs with the consumer's acquire load of tail */
        __atomic_store_n(&r->tail, t, __ATOMIC_RELEASE);
        src += k;
        n -= k;
    }
}

static void pr_close(pr_ring *r) {
    /* release: every push happens-before a consumer that sees the flag;
     * pairs with the acquire load in pr_pop */
    __atomic_store_n(&r->closed, 1, __ATOMIC_RELEASE);
}

/* Consumer: pop 1..n records, busy-waiting; 0 at end of stream. */
static uint64_t pr_pop(pr_ring *r, uint64_t *dst, uint64_t n) {
    uint64_t h = r->head;  /* only this thread writes head */
    uint64_t avail, k, at, first;
    unsigned spins = 0;
    for (;;) {
        avail = r->tail_cache - h;
        if (avail < n) {
            /* acquire: pairs with the producer's release store of tail */
            r->tail_cache = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
            avail = r->tail_cache - h;
        }
        if (avail) break;
        /* acquire: pairs with pr_close's release store */
        if (__atomic_load_n(&r->closed, __ATOMIC_ACQUIRE)) {
            r->tail_cache = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
            if (r->tail_cache == h) return 0;
            continue;
        }
        PR_WAIT(spins);
    }
    k = n < avail ? n : avail;
    at = h & r->mask;
    first = r->capacity - at;
    if (first > k) first = k;
    memcpy(dst, r->buf + at, first * sizeof(uint64_t));
    if (k > first) memcpy(dst + first, r->buf, (k - first) * sizeof(uint64_t));
    /* release: hands the slots back; pairs with the producer's acquire load of head */
    __atomic_store_n(&r->head, h + k, __ATOMIC_RELEASE);
    return k;
}

/* As _stress._produce: tagged records in batches; returns how many were pushed. */
uint64_t pr_produce(pr_ring *r, uint32_t producer, uint64_t n, uint64_t batch, int close) {
    uint64_t *buf = (uint64_t *)malloc((batch ? batch : 1) * sizeof(uint64_t));
    uint64_t seq = 0, i, k;
    if (!buf) return 0;
    if (batch < 1) batch = 1;
    while (seq < n) {
        k = n - seq > batch ? batch : n - seq;
        for (i = 0; i < k; i++) buf[i] = ((uint64_t)producer << 32) | (seq + i);
        pr_push(r, buf, k);
        seq += k;
    }
    free(buf);
    if (close) pr_close(r);
    return seq;
}

/* As _stress._consume: pop until end of stream, tallying per producer. */
uint64_t pr_consume(pr_ring *r, uint64_t batch, pr_tally *t) {
    uint64_t *buf = (uint64_t *)malloc((batch ? batch : 1) * sizeof(uint64_t));
    uint64_t got, i, v, p;
    int64_t s;
    if (!buf) return 0;
    if (batch < 1) batch = 1;
    for (i = 0; i < PR_MAX_PRODUCERS; i++) t->last[i] = -1;
    while ((got = pr_pop(r, buf, batch)) != 0) {
        for (i = 0; i < got; i++) {
            v = buf[i];
            p = v >> 32;
            s = (int64_t)(v & 0xFFFFFFFFu);
            if (p >= PR_MAX_PRODUCERS) { t->bad_producer++; continue; }
            if (s <= t->last[p]) t->order_errors++;
            t->last[p] = s;
            t->counts[p]++;
            t->sums[p] += (uint64_t)s;
            t->count++;
        }
    }
    free(buf);
    return t->count;
}

typedef struct pr_job {
    pr_ring *ring;
    uint64_t n;
    uint64_t batch;
    uint64_t pushed;
    pr_tally *tally;
} pr_job;

static void *pr_producer_main(void *arg) {
    pr_job *job = (pr_job *)arg;
    job->pushed = pr_produce(job->ring, 0, job->n, job->batch, 1);
    return NULL;
}

static void *pr_consumer_main(void *arg) {
    pr_job *job = (pr_job *)arg;
    pr_consume(job->ring, job->batch, job->tally);
    return NULL;
}

static int64_t pr_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* 1P1C with two pthreads on a fresh ring of `capacity` records.  Fills
 * *tally and *pushed; returns the elapsed ns, or -1 on failure. */
int64_t pr_run_threads(uint64_t capacity, uint64_t n, uint64_t batch,
                       pr_tally *tally, uint64_t *pushed) {
    pr_ring *r = pr_ring_new(capacity);
    pthread_t prod, cons;
    pr_job job;
    int64_t t0, t1;
    if (!r) return -1;
    memset(tally, 0, sizeof(*tally));
    job.ring = r;
    job.n = n;
    job.batch = batch;
    job.pushed = 0;
    job.tally = tally;
    t0 = pr_now_ns();
    if (pthread_create(&cons, NULL, pr_consumer_main, &job) != 0) { pr_ring_free(r); return -1; }
    if (pthread_create(&prod, NULL, pr_producer_main, &job) != 0) {
        pr_close(r);
        pthread_join(cons, NULL);
        pr_ring_free(r);
        return -1;
    }
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    t1 = pr_now_ns();
    *pushed = job.pushed;
    pr_ring_free(r);
    return t1 - t0;
}
