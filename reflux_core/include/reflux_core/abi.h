/* reflux_core/abi.h -- the public C ABI of reflux record plug-ins.
 *
 * A plug-in is a `reflux_plugin` struct of function pointers that reflux
 * calls WITHOUT the GIL, one batch (a pointer and a count) at a time.  C or
 * C++ code hands it to reflux in a PyCapsule named REFLUX_PLUGIN_CAPSULE,
 * exposed as the `__reflux_plugin__` attribute of any Python object (see
 * docs/cython.md, "The C ABI"); Cython code subclasses
 * reflux_core.transform.CTransform / CFilter / CKey, which fill this struct.
 *
 * ABI policy: reflux reads `abi_version` and `struct_size` first (they stay
 * the first two fields in every version) and refuses a plug-in whose values
 * differ from its own REFLUX_ABI_VERSION and sizeof(reflux_plugin), naming
 * the node.  Any change to this header or to a public .pxd file bumps
 * REFLUX_ABI_VERSION (and reflux_core.ABI_VERSION, which must be equal).
 *
 * Plain C99, no inline functions, no dependency on Python.h or the core's
 * private headers.
 */
#ifndef REFLUX_CORE_ABI_H
#define REFLUX_CORE_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI (== reflux_core.ABI_VERSION). */
#define REFLUX_ABI_VERSION 1

/* Name of the PyCapsule that carries a `reflux_plugin*`. */
#define REFLUX_PLUGIN_CAPSULE "reflux_core.plugin"

/* reflux_plugin.kind: which function pointer is set. */
#define REFLUX_PLUGIN_TRANSFORM 1
#define REFLUX_PLUGIN_FILTER 2
#define REFLUX_PLUGIN_KEY 3

/* Error codes reserved by reflux (user codes: any other non-zero int32). */
#define REFLUX_ERR_NOT_IMPLEMENTED (-1000) /* the base class method was not overridden */
#define REFLUX_ERR_ROUTE (-1001)           /* a key names no receiver (record pumps) */
#define REFLUX_ERR_BAD_RETURN (-1002)      /* a plug-in returned an impossible count */

/* How a batch call reports a failing record.  reflux sets error = 0 and
 * index = n before each call.  A plug-in that fails on record i stops there,
 * sets index = i and error = a non-zero code; records [0, i) count as done
 * (their outputs written), record i failed, records after i are not done. */
typedef struct reflux_status {
    int64_t index;
    int32_t error;
    int32_t reserved; /* 0 */
} reflux_status;

/* Transform n records of in_itemsize bytes at src into dst (room for n
 * records of out_itemsize bytes).  Each input gives 0 (dropped) or 1
 * output, in order.  Returns how many outputs were written. */
typedef int64_t (*reflux_transform_fn)(void *self, const void *src, int64_t n,
                                       void *dst, reflux_status *status);

/* Predicate over n records: keep[i] = 1 to pass record i, 0 to drop it.
 * Returns how many are kept. */
typedef int64_t (*reflux_filter_fn)(void *self, const void *src, int64_t n,
                                    uint8_t *keep, reflux_status *status);

/* Routing key of n records: keys[i] for record i.  Returns 0. */
typedef int64_t (*reflux_key_fn)(void *self, const void *src, int64_t n,
                                 int64_t *keys, reflux_status *status);

typedef struct reflux_plugin {
    uint32_t abi_version;   /* REFLUX_ABI_VERSION this plug-in was built with */
    uint32_t struct_size;   /* sizeof(reflux_plugin) this plug-in was built with */
    uint32_t kind;          /* REFLUX_PLUGIN_TRANSFORM / _FILTER / _KEY */
    uint32_t flags;         /* 0 (reserved) */
    int64_t in_itemsize;    /* bytes per input record */
    int64_t out_itemsize;   /* bytes per output record (transform); else in_itemsize */
    const char *name;       /* for messages, may be NULL */
    void *self;             /* passed as the first argument of every call */
    reflux_transform_fn transform;  /* kind == TRANSFORM, else NULL */
    reflux_filter_fn filter;        /* kind == FILTER, else NULL */
    reflux_key_fn key;              /* kind == KEY, else NULL */
} reflux_plugin;

#ifdef __cplusplus
}
#endif

#endif /* REFLUX_CORE_ABI_H */
