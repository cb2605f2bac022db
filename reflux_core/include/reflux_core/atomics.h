/* reflux_core/atomics.h -- the small atomics shim the core is built on.
 *
 * GCC and Clang: the __atomic builtins.  MSVC: C11 <stdatomic.h>, which needs
 * `/std:c11 /experimental:c11atomics`.  Every call site in the core names the
 * memory order it uses and the operation it pairs with; this header only maps
 * names to the compiler's primitives.
 *
 * Not part of the public cimport surface: user code never includes it.
 */
#ifndef REFLUX_CORE_ATOMICS_H
#define REFLUX_CORE_ATOMICS_H

#include <stdint.h>
#include <stddef.h>

#if defined(_MSC_VER) && !defined(__clang__)
#  include <stdatomic.h>
#  include <intrin.h>
#  define RX_A64(p) ((_Atomic uint64_t *)(p))
#  define RX_A32(p) ((_Atomic uint32_t *)(p))
#  define rx_load64_relaxed(p)      atomic_load_explicit(RX_A64(p), memory_order_relaxed)
#  define rx_load64_acquire(p)      atomic_load_explicit(RX_A64(p), memory_order_acquire)
#  define rx_load64_seqcst(p)       atomic_load_explicit(RX_A64(p), memory_order_seq_cst)
#  define rx_store64_relaxed(p, v)  atomic_store_explicit(RX_A64(p), (v), memory_order_relaxed)
#  define rx_store64_release(p, v)  atomic_store_explicit(RX_A64(p), (v), memory_order_release)
#  define rx_store64_seqcst(p, v)   atomic_store_explicit(RX_A64(p), (v), memory_order_seq_cst)
#  define rx_add64_relaxed(p, v)    atomic_fetch_add_explicit(RX_A64(p), (v), memory_order_relaxed)
#  define rx_or64_seqcst(p, v)      atomic_fetch_or_explicit(RX_A64(p), (v), memory_order_seq_cst)
#  define rx_add64_release(p, v)    atomic_fetch_add_explicit(RX_A64(p), (v), memory_order_release)
#  define rx_sub64_acqrel(p, v)     atomic_fetch_sub_explicit(RX_A64(p), (v), memory_order_acq_rel)
#  define rx_sub64_relaxed(p, v)    atomic_fetch_sub_explicit(RX_A64(p), (v), memory_order_relaxed)
#  define rx_cas64_seqcst(p, e, d)  atomic_compare_exchange_strong_explicit(RX_A64(p), (e), (d), memory_order_seq_cst, memory_order_relaxed)
#  define rx_cas64_relaxed(p, e, d) atomic_compare_exchange_weak_explicit(RX_A64(p), (e), (d), memory_order_relaxed, memory_order_relaxed)
#  define rx_cas32_acqrel(p, e, d)  atomic_compare_exchange_strong_explicit(RX_A32(p), (e), (d), memory_order_acq_rel, memory_order_acquire)
#  define rx_cas_ptr_acqrel(p, e, d) atomic_compare_exchange_strong_explicit((_Atomic(void *) *)(p), (e), (d), memory_order_acq_rel, memory_order_acquire)
#  define rx_load32_relaxed(p)      atomic_load_explicit(RX_A32(p), memory_order_relaxed)
#  define rx_load32_acquire(p)      atomic_load_explicit(RX_A32(p), memory_order_acquire)
#  define rx_load32_seqcst(p)       atomic_load_explicit(RX_A32(p), memory_order_seq_cst)
#  define rx_add32_seqcst(p, v)     atomic_fetch_add_explicit(RX_A32(p), (v), memory_order_seq_cst)
#  define rx_sub32_relaxed(p, v)    atomic_fetch_sub_explicit(RX_A32(p), (v), memory_order_relaxed)
#  define rx_add32_release(p, v)    atomic_fetch_add_explicit(RX_A32(p), (v), memory_order_release)
#  define rx_xchg32_acqrel(p, v)    atomic_exchange_explicit(RX_A32(p), (v), memory_order_acq_rel)
#  define rx_xchg32_seqcst(p, v)    atomic_exchange_explicit(RX_A32(p), (v), memory_order_seq_cst)
#  define rx_add32_relaxed(p, v)    atomic_fetch_add_explicit(RX_A32(p), (v), memory_order_relaxed)
#  define rx_store32_release(p, v)  atomic_store_explicit(RX_A32(p), (v), memory_order_release)
#  define rx_store32_relaxed(p, v)  atomic_store_explicit(RX_A32(p), (v), memory_order_relaxed)
#  define rx_compiler_barrier()     atomic_signal_fence(memory_order_seq_cst)
#  define rx_fence_seqcst()         atomic_thread_fence(memory_order_seq_cst)
#  if defined(_M_X64) || defined(_M_IX86)
#    define rx_cpu_relax() _mm_pause()
#  else
#    define rx_cpu_relax() __yield()
#  endif
#  define RX_LIKELY(x) (x)
#  define RX_UNLIKELY(x) (x)
#else
#  define rx_load64_relaxed(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#  define rx_load64_acquire(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define rx_load64_seqcst(p)       __atomic_load_n((p), __ATOMIC_SEQ_CST)
#  define rx_store64_relaxed(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#  define rx_store64_release(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#  define rx_store64_seqcst(p, v)   __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#  define rx_add64_relaxed(p, v)    __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#  define rx_or64_seqcst(p, v)      __atomic_fetch_or((p), (v), __ATOMIC_SEQ_CST)
#  define rx_add64_release(p, v)    __atomic_fetch_add((p), (v), __ATOMIC_RELEASE)
#  define rx_sub64_acqrel(p, v)     __atomic_fetch_sub((p), (v), __ATOMIC_ACQ_REL)
#  define rx_sub64_relaxed(p, v)    __atomic_fetch_sub((p), (v), __ATOMIC_RELAXED)
#  define rx_cas64_seqcst(p, e, d)  __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)
#  define rx_cas64_relaxed(p, e, d) __atomic_compare_exchange_n((p), (e), (d), 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)
#  define rx_cas32_acqrel(p, e, d)  __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#  define rx_cas_ptr_acqrel(p, e, d) __atomic_compare_exchange_n((void **)(p), (e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#  define rx_load32_relaxed(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#  define rx_load32_acquire(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define rx_load32_seqcst(p)       __atomic_load_n((p), __ATOMIC_SEQ_CST)
#  define rx_add32_seqcst(p, v)     __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#  define rx_sub32_relaxed(p, v)    __atomic_fetch_sub((p), (v), __ATOMIC_RELAXED)
#  define rx_add32_release(p, v)    __atomic_fetch_add((p), (v), __ATOMIC_RELEASE)
#  define rx_xchg32_acqrel(p, v)    __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#  define rx_xchg32_seqcst(p, v)    __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#  define rx_add32_relaxed(p, v)    __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#  define rx_store32_release(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#  define rx_store32_relaxed(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#  define rx_compiler_barrier()     __atomic_signal_fence(__ATOMIC_SEQ_CST)
#  define rx_fence_seqcst()         __atomic_thread_fence(__ATOMIC_SEQ_CST)
#  if defined(__x86_64__) || defined(__i386__)
#    define rx_cpu_relax() __builtin_ia32_pause()
#  elif defined(__aarch64__) || defined(__arm__)
#    define rx_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#  else
#    define rx_cpu_relax() __asm__ __volatile__("" ::: "memory")
#  endif
#  define RX_LIKELY(x) __builtin_expect(!!(x), 1)
#  define RX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#endif

/* ---- asymmetric barriers ----------------------------------------------
 * A Dekker handshake needs a StoreLoad barrier on both sides.  Ours has a
 * frequent side (every push/pop checking for a parked peer, every push
 * checking for close) and a rare side (a thread about to park, close()).
 * Where the OS can interrupt every thread of the process with a barrier
 * (Linux membarrier, Windows FlushProcessWriteBuffers), the rare side pays
 * for both and the frequent side is only a compiler barrier; elsewhere both
 * sides use a seq_cst fence.
 *
 *   rx_light_barrier()  frequent side   pairs with rx_heavy_barrier()
 *   rx_heavy_barrier()  rare side       pairs with rx_light_barrier()
 *
 * rx_asym_init() must run once in every extension module that includes
 * this header, before any ring is used (it is idempotent and answers the
 * same for the whole process). */
#if defined(__linux__)
#  include <unistd.h>
#  include <sys/syscall.h>
#  if defined(__NR_membarrier)
#    define RX_HAVE_MEMBARRIER 1
#    define RX_MB_QUERY 0
#    define RX_MB_PRIVATE_EXPEDITED (1 << 3)
#    define RX_MB_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#  endif
#elif defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#endif

static int rx_asym_mode = 0; /* 1: light = compiler barrier; 0: both fences */

static int rx_asym_init(void) {
#if defined(RX_HAVE_MEMBARRIER) && !defined(RX_NO_ASYM_BARRIER)
    long q = syscall(__NR_membarrier, RX_MB_QUERY, 0, 0);
    if (q > 0 && (q & RX_MB_PRIVATE_EXPEDITED) &&
        syscall(__NR_membarrier, RX_MB_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        rx_asym_mode = 1;
#elif defined(_WIN32) && !defined(RX_NO_ASYM_BARRIER)
    rx_asym_mode = 1;
#endif
    return rx_asym_mode;
}

static inline void rx_light_barrier(void) {
    if (RX_LIKELY(rx_asym_mode)) rx_compiler_barrier();
    else rx_fence_seqcst();
}

static inline void rx_heavy_barrier(void) {
#if defined(RX_HAVE_MEMBARRIER)
    if (rx_asym_mode) {
        syscall(__NR_membarrier, RX_MB_PRIVATE_EXPEDITED, 0, 0);
        return;
    }
#elif defined(_WIN32)
    if (rx_asym_mode) {
        FlushProcessWriteBuffers();
        return;
    }
#endif
    rx_fence_seqcst();
}

/* Producer-written and consumer-written fields sit this far apart: x86 cores
 * prefetch cache lines in pairs, so 64 bytes is not enough to stop false sharing. */
#define RX_CACHE_PAIR 128

#endif /* REFLUX_CORE_ATOMICS_H */
