/* reflux_core/park.h -- parking a thread until an event word changes.
 *
 * An rx_event is a 32-bit sequence word plus a "sleepers" flag.  The wait
 * side is a Dekker handshake, so no wake-up is ever lost, and the notifier
 * claims the flag with an exchange, so a burst of notifications costs one
 * syscall per parked period, not one per notification:
 *
 *   waiter                                   notifier
 *   s = rx_event_prepare(ev)                 publish the data
 *     (reads seq, then sleepers = 1)         rx_light_barrier()
 *   rx_heavy_barrier()                       rx_event_notify(ev)
 *   re-check the condition                     (load of sleepers; only if set:
 *   if still not ready: rx_event_wait(s)        exchange it to 0, seq += 1,
 *                                               wake all)
 *
 * Either the waiter's re-check sees the data, or the notifier's load sees the
 * flag; if the notifier bumps seq after the waiter read it, the kernel wait
 * returns at once because the word no longer holds `s`.  Waiters never clear
 * the flag (another waiter may have set it); a stale flag costs one spurious
 * wake-up call, never a lost one.
 *
 * Back ends: futex on Linux; WaitOnAddress on Windows; a mutex + condition
 * variable elsewhere, also selectable on Linux with -DRX_PARK_PORTABLE so the
 * fallback is compiled and tested on the development machine.
 */
#ifndef REFLUX_CORE_PARK_H
#define REFLUX_CORE_PARK_H

#include <stdint.h>
#include <errno.h>
#include "reflux_core/atomics.h"

#if defined(_WIN32)
#  define RX_PARK_WINDOWS 1
#  undef RX_PARK_PORTABLE  /* Windows always has WaitOnAddress; no pthreads there */
#elif defined(__linux__) && !defined(RX_PARK_PORTABLE)
#  define RX_PARK_FUTEX 1
#else
#  ifndef RX_PARK_PORTABLE
#    define RX_PARK_PORTABLE 1
#  endif
#endif

#if defined(RX_PARK_WINDOWS)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#  pragma comment(lib, "Synchronization.lib")
#else
#  include <time.h>
#  include <sched.h>
#  include <pthread.h>
#endif
#if defined(RX_PARK_FUTEX)
#  include <linux/futex.h>
#  include <sys/syscall.h>
#  include <unistd.h>
#  include <limits.h>
#endif

typedef struct rx_event {
    uint32_t seq;      /* bumped by notifiers; a parked thread sleeps while unchanged */
    uint32_t sleepers; /* 1 when some thread may be parked on seq */
    uint32_t spin_hint; /* ns a waiter here should spin before parking (adaptive) */
    uint32_t gil_hint;  /* unused since the GIL settle follows the ring instead of a budget; kept for the layout */
#if defined(RX_PARK_PORTABLE)
    pthread_mutex_t mu;
    pthread_cond_t cv;
#endif
} rx_event;

/* Name of the back end, for diagnostics and tests. */
static const char *rx_park_backend(void) {
#if defined(RX_PARK_FUTEX)
    return "futex";
#elif defined(RX_PARK_WINDOWS)
    return "waitonaddress";
#else
    return "condvar";
#endif
}

/* Monotonic clock in nanoseconds. */
static inline int64_t rx_now_ns(void) {
#if defined(_WIN32)
    static LARGE_INTEGER freq;
    LARGE_INTEGER now;
    if (freq.QuadPart == 0) QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (int64_t)((double)now.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

static inline void rx_thread_yield(void) {
#if defined(_WIN32)
    SwitchToThread();
#else
    sched_yield();
#endif
}

static inline int rx_event_init(rx_event *ev) {
    ev->seq = 0;
    ev->sleepers = 0;
    ev->spin_hint = 20000;
    ev->gil_hint = 0;
#if defined(RX_PARK_PORTABLE)
    if (pthread_mutex_init(&ev->mu, NULL) != 0) return -1;
    {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
#  if !defined(__APPLE__)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
#  endif
        if (pthread_cond_init(&ev->cv, &attr) != 0) {
            pthread_condattr_destroy(&attr);
            pthread_mutex_destroy(&ev->mu);
            return -1;
        }
        pthread_condattr_destroy(&attr);
    }
#endif
    return 0;
}

static inline void rx_event_destroy(rx_event *ev) {
#if defined(RX_PARK_PORTABLE)
    pthread_cond_destroy(&ev->cv);
    pthread_mutex_destroy(&ev->mu);
#else
    (void)ev;
#endif
}

/* Waiter, step 1: read the sequence, then announce the wait.  The caller must
 * re-check its condition after this and before rx_event_wait. */
static inline uint32_t rx_event_prepare(rx_event *ev) {
    /* acquire: pairs with the seq_cst bump in rx_event_notify */
    uint32_t s = rx_load32_acquire(&ev->seq);
    /* seq_cst exchange: the waiter half of the Dekker pair (the caller adds
     * rx_heavy_barrier before re-checking); pairs with the load + exchange
     * of `sleepers` in rx_event_notify */
    rx_xchg32_seqcst(&ev->sleepers, 1);
    return s;
}

/* Waiter, step 2: sleep while ev->seq == s, at most timeout_ns.
 * Returns 0 when woken or when seq had already moved, 1 on timeout,
 * -1 when interrupted (EINTR).  Spurious returns are allowed: callers loop. */
static inline int rx_event_wait(rx_event *ev, uint32_t s, int64_t timeout_ns) {
    if (timeout_ns < 0) timeout_ns = 0;
#if defined(RX_PARK_FUTEX)
    struct timespec ts;
    long r;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
    ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
    r = syscall(SYS_futex, &ev->seq, FUTEX_WAIT_PRIVATE, s, &ts, NULL, 0);
    if (r == 0) return 0;
    if (errno == ETIMEDOUT) return 1;
    if (errno == EINTR) return -1;
    return 0; /* EAGAIN: the word already changed */
#elif defined(RX_PARK_WINDOWS)
    DWORD ms = (DWORD)((timeout_ns + 999999) / 1000000);
    if (WaitOnAddress(&ev->seq, &s, sizeof(s), ms)) return 0;
    return GetLastError() == ERROR_TIMEOUT ? 1 : 0;
#else
    int rc = 0;
    pthread_mutex_lock(&ev->mu);
#  if defined(__APPLE__)
    {
        struct timespec rel;
        rel.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        rel.tv_nsec = (long)(timeout_ns % 1000000000LL);
        /* relaxed: the mutex orders this read against the notifier's bump */
        if (rx_load32_relaxed(&ev->seq) == s)
            rc = pthread_cond_timedwait_relative_np(&ev->cv, &ev->mu, &rel);
    }
#  else
    {
        struct timespec abs_ts;
        int64_t deadline;
        clock_gettime(CLOCK_MONOTONIC, &abs_ts);
        deadline = (int64_t)abs_ts.tv_sec * 1000000000LL + abs_ts.tv_nsec + timeout_ns;
        abs_ts.tv_sec = (time_t)(deadline / 1000000000LL);
        abs_ts.tv_nsec = (long)(deadline % 1000000000LL);
        /* relaxed: the mutex orders this read against the notifier's bump */
        while (rx_load32_relaxed(&ev->seq) == s && rc == 0)
            rc = pthread_cond_timedwait(&ev->cv, &ev->mu, &abs_ts);
    }
#  endif
    pthread_mutex_unlock(&ev->mu);
    return rc == ETIMEDOUT ? 1 : 0;
#endif
}

/* Notifier: call after publishing and rx_light_barrier().  Wakes every
 * parked thread, and costs only a load when none is. */
static inline void rx_event_notify(rx_event *ev) {
    /* relaxed load after the caller's light barrier: the notifier half of the
     * Dekker pair; pairs with the exchange + heavy barrier of the waiter */
    if (RX_LIKELY(rx_load32_relaxed(&ev->sleepers) == 0)) return;
    /* seq_cst exchange: one notifier per parked period claims the wake-up;
     * pairs with the exchange in rx_event_prepare */
    if (rx_xchg32_seqcst(&ev->sleepers, 0) == 0) return;
    /* seq_cst RMW: makes a waiter that read the old seq fail its kernel
     * compare; pairs with the acquire load in rx_event_prepare */
    rx_add32_seqcst(&ev->seq, 1);
#if defined(RX_PARK_FUTEX)
    syscall(SYS_futex, &ev->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#elif defined(RX_PARK_WINDOWS)
    WakeByAddressAll(&ev->seq);
#else
    /* taking the mutex orders the bump before any waiter's check-then-sleep */
    pthread_mutex_lock(&ev->mu);
    pthread_cond_broadcast(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
#endif
}

/* Unconditional wake, used by close(): bumps and wakes even if no waiter
 * has announced yet (it will see the bump or the closed flag). */
static inline void rx_event_wake_all(rx_event *ev) {
    /* seq_cst RMW: pairs with the acquire load in rx_event_prepare */
    rx_add32_seqcst(&ev->seq, 1);
#if defined(RX_PARK_FUTEX)
    syscall(SYS_futex, &ev->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#elif defined(RX_PARK_WINDOWS)
    WakeByAddressAll(&ev->seq);
#else
    pthread_mutex_lock(&ev->mu);
    pthread_cond_broadcast(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
#endif
}

#endif /* REFLUX_CORE_PARK_H */
