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
#  define rx_cas64_seqcst(p, e, d)  atomic_compare_exchange_strong_explicit(RX_A64(p), (e), (d), memory_order_seq_cst, memory_order_relaxed)
#  define rx_cas64_relaxed(p, e, d) atomic_compare_exchange_weak_explicit(RX_A64(p), (e), (d), memory_order_relaxed, memory_order_relaxed)
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
#  define rx_cas64_seqcst(p, e, d)  __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)
#  define rx_cas64_relaxed(p, e, d) __atomic_compare_exchange_n((p), (e), (d), 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)
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

/* Producer-written and consumer-written fields sit this far apart: x86 cores
 * prefetch cache lines in pairs, so 64 bytes is not enough to stop false sharing. */
#define RX_CACHE_PAIR 128

#endif /* REFLUX_CORE_ATOMICS_H */
