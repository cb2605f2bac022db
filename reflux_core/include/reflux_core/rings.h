/* reflux_core/rings.h -- bounded lock-free ring buffers (private to the core).
 *
 * Two rings, both over fixed-size elements (a PyObject* for object channels,
 * a record of `elem` bytes for record channels):
 *
 *  rx_spsc  one producer, one consumer.  64-bit free-running positions (no ABA,
 *           no wasted slot); each side caches the other side's position so the
 *           shared cache lines move only when the cached view runs out.
 *  rx_mpmc  any number of producers and consumers: per-slot sequence numbers
 *           (Vyukov's bounded MPMC queue, as crossbeam's ArrayQueue).
 *
 * Close is end-of-stream and lives in bit 63 of the producers' position, so a
 * push can never succeed after close (its CAS fails) and a consumer that sees
 * the bit together with an empty ring knows nothing more will arrive.
 *
 * Producer-written and consumer-written fields are RX_CACHE_PAIR (128) bytes
 * apart.  Try-operations never block; blocking, spinning and parking are done
 * by the caller on the rx_event words (park.h).
 */
#ifndef REFLUX_CORE_RINGS_H
#define REFLUX_CORE_RINGS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "reflux_core/atomics.h"
#include "reflux_core/park.h"

#if defined(_MSC_VER)
#  include <malloc.h>
#  define RX_INLINE static __forceinline
#else
#  define RX_INLINE static inline __attribute__((always_inline))
#endif

#define RX_CLOSED_BIT (UINT64_C(1) << 63)
#define RX_POS_MASK (~RX_CLOSED_BIT)
/* Largest capacity a channel accepts: 2**28 slots. */
#define RX_MAX_CAPACITY (UINT64_C(1) << 28)

#define RX_PAD_AFTER(name, used) char name[RX_CACHE_PAIR - ((used) % RX_CACHE_PAIR)]

static void *rx_aligned_alloc(size_t size) {
#if defined(_MSC_VER)
    return _aligned_malloc(size, RX_CACHE_PAIR);
#else
    void *p = NULL;
    if (posix_memalign(&p, RX_CACHE_PAIR, size) != 0) return NULL;
    return p;
#endif
}

static void rx_aligned_free(void *p) {
#if defined(_MSC_VER)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* Smallest power of two >= n (n >= 1, n <= RX_MAX_CAPACITY). */
static inline uint64_t rx_round_capacity(uint64_t n) {
    uint64_t c = 1;
    while (c < n) c <<= 1;
    return c;
}

/* ------------------------------------------------------------------ SPSC */

typedef struct rx_spsc {
    /* read-only after creation */
    char *buf;
    uint64_t mask;
    uint64_t capacity;
    uint64_t elem;
    RX_PAD_AFTER(_pad0, 4 * sizeof(uint64_t));
    /* producer line */
    uint64_t tail;          /* next position to write; only the producer writes it */
    uint64_t head_cache;    /* producer-private copy of head */
    uint64_t full_waits;    /* times a producer had to wait for room */
    uint32_t pushing;       /* 1 while a push is between its closed check and its publish */
    uint32_t producer_busy; /* misuse detector: a producer is inside a call */
    RX_PAD_AFTER(_pad1, 3 * sizeof(uint64_t) + 2 * sizeof(uint32_t));
    /* consumer line */
    uint64_t head;          /* next position to read; only the consumer writes it */
    uint64_t tail_cache;    /* consumer-private copy of tail */
    uint64_t empty_waits;   /* times a consumer had to wait for an item */
    uint32_t consumer_busy; /* misuse detector: a consumer is inside a call */
    RX_PAD_AFTER(_pad2, 3 * sizeof(uint64_t) + sizeof(uint32_t));
    /* close line: each word written once */
    uint32_t closed;        /* close() was called: pushes fail from now on */
    uint32_t ended;         /* close() finished: no push in flight, tail is final */
    RX_PAD_AFTER(_pad3, 2 * sizeof(uint32_t));
    rx_event not_empty;     /* consumers park here, producers notify */
    RX_PAD_AFTER(_pad4, sizeof(rx_event));
    rx_event not_full;      /* producers park here, consumers notify */
    RX_PAD_AFTER(_pad5, sizeof(rx_event));
} rx_spsc;

static rx_spsc *rx_spsc_new(uint64_t capacity, uint64_t elem) {
    rx_spsc *r = (rx_spsc *)rx_aligned_alloc(sizeof(rx_spsc));
    if (!r) return NULL;
    memset(r, 0, sizeof(*r));
    r->capacity = rx_round_capacity(capacity);
    r->mask = r->capacity - 1;
    r->elem = elem;
    r->buf = (char *)rx_aligned_alloc((size_t)(r->capacity * elem));
    if (!r->buf) { rx_aligned_free(r); return NULL; }
    if (rx_event_init(&r->not_empty) != 0) goto fail;
    if (rx_event_init(&r->not_full) != 0) { rx_event_destroy(&r->not_empty); goto fail; }
    return r;
fail:
    rx_aligned_free(r->buf);
    rx_aligned_free(r);
    return NULL;
}

static void rx_spsc_free(rx_spsc *r) {
    if (!r) return;
    rx_event_destroy(&r->not_empty);
    rx_event_destroy(&r->not_full);
    rx_aligned_free(r->buf);
    rx_aligned_free(r);
}

/* Copy n elements between the ring (from position pos) and flat memory. */
RX_INLINE void rx_spsc_copy_in(rx_spsc *r, uint64_t pos, const char *src, uint64_t n, uint64_t elem) {
    uint64_t at = pos & r->mask;
    uint64_t first = r->capacity - at;
    if (n == 1 && elem == 8) {  /* one pointer or one 8-byte record: no memcpy call */
        memcpy(r->buf + at * 8, src, 8);
        return;
    }
    if (first > n) first = n;
    memcpy(r->buf + at * elem, src, (size_t)(first * elem));
    if (n > first) memcpy(r->buf, src + first * elem, (size_t)((n - first) * elem));
}

RX_INLINE void rx_spsc_copy_out(rx_spsc *r, uint64_t pos, char *dst, uint64_t n, uint64_t elem) {
    uint64_t at = pos & r->mask;
    uint64_t first = r->capacity - at;
    if (n == 1 && elem == 8) {
        memcpy(dst, r->buf + at * 8, 8);
        return;
    }
    if (first > n) first = n;
    memcpy(dst, r->buf + at * elem, (size_t)(first * elem));
    if (n > first) memcpy(dst + first * elem, r->buf, (size_t)((n - first) * elem));
}

/* Producer only.  Pushes up to n elements; returns how many (0 when full),
 * or -1 when the ring is closed (nothing was pushed).
 *
 * No atomic read-modify-write on this path: close() is detected with the
 * `pushing` announcement (see rx_spsc_close), and the parked-consumer check
 * uses the light side of an asymmetric barrier. */
RX_INLINE int64_t rx_spsc_try_push_(rx_spsc *r, const void *src, uint64_t n, uint64_t elem) {
    /* relaxed: tail is written only by this producer */
    uint64_t t = rx_load64_relaxed(&r->tail);
    uint64_t free_slots, k;
    /* relaxed store + light barrier: announce the push before checking
     * `closed`; pairs with the heavy barrier in rx_spsc_close, so a push
     * that misses the flag is seen in flight by close() */
    rx_store32_relaxed(&r->pushing, 1);
    rx_light_barrier();
    /* relaxed: ordered by the barrier pair above */
    if (RX_UNLIKELY(rx_load32_relaxed(&r->closed))) {
        /* release: pairs with close()'s acquire load of `pushing` */
        rx_store32_release(&r->pushing, 0);
        return -1;
    }
    free_slots = r->capacity - (t - r->head_cache);
    if (free_slots < n) {
        /* acquire: pairs with the consumer's release store of head, so the
         * slots it released are no longer being read */
        r->head_cache = rx_load64_acquire(&r->head);
        free_slots = r->capacity - (t - r->head_cache);
        if (free_slots == 0) {
            rx_store32_release(&r->pushing, 0);
            return 0;
        }
    }
    k = n < free_slots ? n : free_slots;
    rx_spsc_copy_in(r, t, (const char *)src, k, elem);
    /* release: publishes the slots; pairs with the consumer's acquire load */
    rx_store64_release(&r->tail, t + k);
    /* release: the push is over (tail is published first); pairs with
     * close()'s acquire load of `pushing` */
    rx_store32_release(&r->pushing, 0);
    /* light barrier: StoreLoad between publishing and the check for a parked
     * consumer; pairs with the heavy barrier of the waiter */
    rx_light_barrier();
    rx_event_notify(&r->not_empty);
    return (int64_t)k;
}

/* Consumer only.  Pops up to n elements into dst; returns how many, 0 when
 * empty, or -1 when closed and drained (end of stream). */
RX_INLINE int64_t rx_spsc_try_pop_(rx_spsc *r, void *dst, uint64_t n, uint64_t elem) {
    /* relaxed: head is written only by this consumer */
    uint64_t h = rx_load64_relaxed(&r->head);
    uint64_t avail = r->tail_cache - h, k;
    if (avail < n) {
        /* acquire: pairs with the producer's release store of tail, making
         * the slot contents visible */
        r->tail_cache = rx_load64_acquire(&r->tail);
        avail = r->tail_cache - h;
        if (avail == 0) {
            /* acquire: pairs with close()'s release store of `ended`, after
             * which tail is final */
            if (!rx_load32_acquire(&r->ended)) return 0;
            r->tail_cache = rx_load64_acquire(&r->tail);
            avail = r->tail_cache - h;
            if (avail == 0) return -1;
        }
    }
    k = n < avail ? n : avail;
    rx_spsc_copy_out(r, h, (char *)dst, k, elem);
    /* release: hands the slots back to the producer; pairs with its acquire
     * load of head */
    rx_store64_release(&r->head, h + k);
    /* light barrier: StoreLoad before the check for a parked producer;
     * pairs with the heavy barrier of the waiter */
    rx_light_barrier();
    rx_event_notify(&r->not_full);
    return (int64_t)k;
}

/* Readiness probes for waiters, called after rx_event_prepare and
 * rx_heavy_barrier (which order them); acquire loads suffice. */
static inline int rx_spsc_can_pop(rx_spsc *r) {
    /* acquire: pairs with the producer's release of tail and close()'s
     * release of `ended`; relaxed head: only the consumer (the caller) writes it */
    return rx_load64_acquire(&r->tail) != rx_load64_relaxed(&r->head) ||
           rx_load32_acquire(&r->ended);
}

static inline int rx_spsc_can_push(rx_spsc *r) {
    /* acquire: pairs with the consumer's release of head and close()'s
     * store of `closed`; relaxed tail: only the producer (the caller) writes it */
    return rx_load64_relaxed(&r->tail) - rx_load64_acquire(&r->head) < r->capacity ||
           rx_load32_acquire(&r->closed);
}

static inline uint64_t rx_spsc_len(rx_spsc *r) {
    /* acquire both: a snapshot for __len__ and stats, exact only when quiet */
    uint64_t h = rx_load64_acquire(&r->head);
    uint64_t t = rx_load64_acquire(&r->tail);
    return t > h ? t - h : 0;
}

static inline int rx_spsc_closed(rx_spsc *r) {
    /* acquire: pairs with close()'s exchange */
    return rx_load32_acquire(&r->closed) != 0;
}

/* End of stream: close() finished and everything pushed was popped. */
static inline int rx_spsc_drained(rx_spsc *r) {
    /* acquire `ended` first (pairs with close()'s release); tail is final then */
    return rx_load32_acquire(&r->ended) &&
           rx_load64_acquire(&r->tail) == rx_load64_acquire(&r->head);
}

/* Any thread.  Returns 1 if this call closed the ring, 0 if it was closed.
 * When it returns, no push is in flight and tail is final, so consumers
 * drain exactly what was pushed. */
static inline int rx_spsc_close(rx_spsc *r) {
    unsigned spins = 0;
    /* seq_cst exchange: one closer wins; pairs with the producer's relaxed
     * load of `closed` through the heavy/light barrier pair below */
    uint32_t was = rx_xchg32_seqcst(&r->closed, 1);
    if (!was) {
        /* heavy barrier: after it, a producer either sees `closed` or its
         * `pushing` announcement is visible here; pairs with the light
         * barrier in rx_spsc_try_push_ */
        rx_heavy_barrier();
        /* acquire: pairs with the producer's release of `pushing`, which
         * follows its publish of tail.  A push never waits while announced,
         * so this ends within one push. */
        while (rx_load32_acquire(&r->pushing)) {
            if (++spins % 64 == 0) rx_thread_yield(); else rx_cpu_relax();
        }
        /* release: tail is final; pairs with the consumers' acquire load */
        rx_store32_release(&r->ended, 1);
    } else {
        /* acquire: another closer is finishing; return only once it has */
        while (!rx_load32_acquire(&r->ended)) {
            if (++spins % 64 == 0) rx_thread_yield(); else rx_cpu_relax();
        }
    }
    rx_event_wake_all(&r->not_empty);
    rx_event_wake_all(&r->not_full);
    return !was;
}

/* ------------------------------------------------------------------ MPMC */

typedef struct rx_mpmc {
    /* read-only after creation */
    char *slots;            /* stride bytes each: uint64 sequence, then the element */
    uint64_t mask;
    uint64_t capacity;
    uint64_t elem;
    uint64_t stride;
    RX_PAD_AFTER(_pad0, 5 * sizeof(uint64_t));
    /* producers' line */
    uint64_t enq;           /* next position to claim | RX_CLOSED_BIT */
    uint64_t full_waits;
    RX_PAD_AFTER(_pad1, 2 * sizeof(uint64_t));
    /* consumers' line */
    uint64_t deq;           /* next position to take */
    uint64_t empty_waits;
    RX_PAD_AFTER(_pad2, 2 * sizeof(uint64_t));
    rx_event not_empty;
    RX_PAD_AFTER(_pad3, sizeof(rx_event));
    rx_event not_full;
    RX_PAD_AFTER(_pad4, sizeof(rx_event));
} rx_mpmc;

#define RX_SLOT(r, pos) ((r)->slots + ((pos) & (r)->mask) * (r)->stride)

static rx_mpmc *rx_mpmc_new(uint64_t capacity, uint64_t elem) {
    uint64_t i;
    rx_mpmc *r = (rx_mpmc *)rx_aligned_alloc(sizeof(rx_mpmc));
    if (!r) return NULL;
    memset(r, 0, sizeof(*r));
    /* at least 2 slots: with one, "filled at pos" (seq = pos + 1) and "free
     * for pos + 1" would be the same sequence number */
    r->capacity = rx_round_capacity(capacity < 2 ? 2 : capacity);
    r->mask = r->capacity - 1;
    r->elem = elem;
    r->stride = sizeof(uint64_t) + ((elem + 7) & ~(uint64_t)7);
    r->slots = (char *)rx_aligned_alloc((size_t)(r->capacity * r->stride));
    if (!r->slots) { rx_aligned_free(r); return NULL; }
    for (i = 0; i < r->capacity; i++) *(uint64_t *)RX_SLOT(r, i) = i;
    if (rx_event_init(&r->not_empty) != 0) goto fail;
    if (rx_event_init(&r->not_full) != 0) { rx_event_destroy(&r->not_empty); goto fail; }
    return r;
fail:
    rx_aligned_free(r->slots);
    rx_aligned_free(r);
    return NULL;
}

static void rx_mpmc_free(rx_mpmc *r) {
    if (!r) return;
    rx_event_destroy(&r->not_empty);
    rx_event_destroy(&r->not_full);
    rx_aligned_free(r->slots);
    rx_aligned_free(r);
}

/* Any producer.  Pushes up to n elements; returns how many (0 when full),
 * or -1 when closed and none was pushed.  Notifies once per call. */
RX_INLINE int64_t rx_mpmc_try_push_(rx_mpmc *r, const void *src, uint64_t n, uint64_t elem) {
    uint64_t done = 0;
    /* relaxed: a hint; the CAS below decides */
    uint64_t pos = rx_load64_relaxed(&r->enq);
    while (done < n) {
        char *slot;
        uint64_t seq;
        int64_t dif;
        if (RX_UNLIKELY(pos & RX_CLOSED_BIT)) break;
        slot = RX_SLOT(r, pos);
        /* acquire: pairs with the consumer's release store that freed the slot */
        seq = rx_load64_acquire((uint64_t *)slot);
        dif = (int64_t)(seq - pos);
        if (dif == 0) {
            /* relaxed CAS: claims the position; the slot's release store below
             * publishes the data */
            if (rx_cas64_relaxed(&r->enq, &pos, pos + 1)) {
                memcpy(slot + sizeof(uint64_t), (const char *)src + done * elem, (size_t)elem);
                /* release: pairs with the consumer's acquire load of seq */
                rx_store64_release((uint64_t *)slot, pos + 1);
                done++;
                pos++;
            }
        } else if (dif < 0) {
            break; /* the slot of this lap is still full */
        } else {
            /* relaxed: another producer moved on; reload the hint */
            pos = rx_load64_relaxed(&r->enq);
        }
    }
    if (done) {
        /* light barrier: StoreLoad before the check for a parked consumer;
         * pairs with the heavy barrier of the waiter */
        rx_light_barrier();
        rx_event_notify(&r->not_empty);
        return (int64_t)done;
    }
    return (pos & RX_CLOSED_BIT) ? -1 : 0;
}

/* Any consumer.  Pops up to n elements; returns how many, 0 when empty (or a
 * claimed slot is not published yet), -1 when closed and drained. */
RX_INLINE int64_t rx_mpmc_try_pop_(rx_mpmc *r, void *dst, uint64_t n, uint64_t elem) {
    uint64_t done = 0;
    /* relaxed: a hint; the CAS below decides */
    uint64_t pos = rx_load64_relaxed(&r->deq);
    while (done < n) {
        char *slot = RX_SLOT(r, pos);
        /* acquire: pairs with the producer's release store of seq */
        uint64_t seq = rx_load64_acquire((uint64_t *)slot);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (rx_cas64_relaxed(&r->deq, &pos, pos + 1)) {
                memcpy((char *)dst + done * elem, slot + sizeof(uint64_t), (size_t)elem);
                /* release: frees the slot for the next lap; pairs with the
                 * producer's acquire load of seq */
                rx_store64_release((uint64_t *)slot, pos + r->capacity);
                done++;
                pos++;
            }
        } else if (dif < 0) {
            break; /* nothing published at this position yet */
        } else {
            /* relaxed: another consumer moved on; reload the hint */
            pos = rx_load64_relaxed(&r->deq);
        }
    }
    if (done) {
        /* light barrier: StoreLoad before the check for a parked producer;
         * pairs with the heavy barrier of the waiter */
        rx_light_barrier();
        rx_event_notify(&r->not_full);
        return (int64_t)done;
    }
    {
        /* seq_cst: pairs with close's fetch_or; closed and every claimed
         * position consumed means the end of the stream */
        uint64_t e = rx_load64_seqcst(&r->enq);
        if ((e & RX_CLOSED_BIT) && (e & RX_POS_MASK) == rx_load64_seqcst(&r->deq)) return -1;
    }
    return 0;
}

static inline int rx_mpmc_can_pop(rx_mpmc *r) {
    /* seq_cst loads: the waiter's re-check, after its heavy barrier */
    uint64_t pos = rx_load64_seqcst(&r->deq);
    uint64_t e = rx_load64_seqcst(&r->enq);
    if (e & RX_CLOSED_BIT) return 1;
    return rx_load64_seqcst((uint64_t *)RX_SLOT(r, pos)) == pos + 1;
}

static inline int rx_mpmc_can_push(rx_mpmc *r) {
    /* seq_cst loads: the waiter's re-check, after its heavy barrier */
    uint64_t pos = rx_load64_seqcst(&r->enq);
    if (pos & RX_CLOSED_BIT) return 1;
    return rx_load64_seqcst((uint64_t *)RX_SLOT(r, pos)) == pos;
}

static inline uint64_t rx_mpmc_len(rx_mpmc *r) {
    /* acquire both: a snapshot, exact only when quiet */
    uint64_t d = rx_load64_acquire(&r->deq);
    uint64_t e = rx_load64_acquire(&r->enq) & RX_POS_MASK;
    return e > d ? e - d : 0;
}

static inline int rx_mpmc_closed(rx_mpmc *r) {
    /* acquire: pairs with close's seq_cst fetch_or */
    return (rx_load64_acquire(&r->enq) & RX_CLOSED_BIT) != 0;
}

/* End of stream: closed and every claimed position consumed. */
static inline int rx_mpmc_drained(rx_mpmc *r) {
    /* acquire: pairs with close's fetch_or and the consumers' claims */
    uint64_t e = rx_load64_acquire(&r->enq);
    return (e & RX_CLOSED_BIT) && (e & RX_POS_MASK) == rx_load64_acquire(&r->deq);
}

static inline int rx_mpmc_close(rx_mpmc *r) {
    /* seq_cst RMW: producers' claim CAS fails from here on */
    uint64_t old = rx_or64_seqcst(&r->enq, RX_CLOSED_BIT);
    rx_event_wake_all(&r->not_empty);
    rx_event_wake_all(&r->not_full);
    return (old & RX_CLOSED_BIT) == 0;
}

/* ---------------------------------------------- typed entry points */
/* Object channels move PyObject* (sizeof(void*), a compile-time constant the
 * compiler folds into the copies); record channels move r->elem bytes. */

static inline int64_t rx_spsc_push_ptrs(rx_spsc *r, void *const *src, uint64_t n) {
    return rx_spsc_try_push_(r, src, n, sizeof(void *));
}
static inline int64_t rx_spsc_pop_ptrs(rx_spsc *r, void **dst, uint64_t n) {
    return rx_spsc_try_pop_(r, dst, n, sizeof(void *));
}
static inline int64_t rx_mpmc_push_ptrs(rx_mpmc *r, void *const *src, uint64_t n) {
    return rx_mpmc_try_push_(r, src, n, sizeof(void *));
}
static inline int64_t rx_mpmc_pop_ptrs(rx_mpmc *r, void **dst, uint64_t n) {
    return rx_mpmc_try_pop_(r, dst, n, sizeof(void *));
}
static inline int64_t rx_spsc_push_recs(rx_spsc *r, const void *src, uint64_t n) {
    return rx_spsc_try_push_(r, src, n, r->elem);
}
static inline int64_t rx_spsc_pop_recs(rx_spsc *r, void *dst, uint64_t n) {
    return rx_spsc_try_pop_(r, dst, n, r->elem);
}
static inline int64_t rx_mpmc_push_recs(rx_mpmc *r, const void *src, uint64_t n) {
    return rx_mpmc_try_push_(r, src, n, r->elem);
}
static inline int64_t rx_mpmc_pop_recs(rx_mpmc *r, void *dst, uint64_t n) {
    return rx_mpmc_try_pop_(r, dst, n, r->elem);
}

/* Misuse detector for SPSC ends: 0 if the caller is now the only one inside,
 * 1 if another thread already was. */
static inline int rx_enter_side(uint32_t *busy) {
    /* acq_rel exchange: pairs with the release store in rx_leave_side */
    return rx_xchg32_acqrel(busy, 1) != 0;
}
static inline void rx_leave_side(uint32_t *busy) {
    /* release: pairs with the acq_rel exchange in rx_enter_side */
    rx_store32_release(busy, 0);
}

#endif /* REFLUX_CORE_RINGS_H */
