/* Hot loops of the GPT sample index, as a plain CPython extension.
 *
 * Arrays come in through the buffer protocol, so building needs no numpy headers; the Python side
 * (llama_data/_native.py) allocates every output with numpy and checks dtypes, and the slow twins
 * in sample_index.py / blending.py define what each function must return.
 *
 *   build_sample_idx(sizes, doc_idx, seq_len, out) -> None
 *   build_blending_indices(weights, dataset_index_out, sample_index_out) -> None
 *   shuffle_mt19937(key, pos, array) -> new pos
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* --- buffer helpers ------------------------------------------------------------------------ */

/* A C-contiguous view of obj; dtypes are checked separately against the struct format character
 * ('i' signed int, 'u' unsigned int, 'f' float) and the item size. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    return PyObject_GetBuffer(obj, view, flags);
}

static char format_kind(const Py_buffer *view) {
    const char *f = view->format ? view->format : "B";
    while (*f == '<' || *f == '=' || *f == '@' || *f == '!') {
        f++;
    }
    switch (*f) {
        case 'b': case 'h': case 'i': case 'l': case 'q': case 'n': return 'i';
        case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N': return 'u';
        case 'f': case 'd': return 'f';
        default: return '?';
    }
}

static int check_kind(const Py_buffer *view, char kind, Py_ssize_t itemsize, const char *name) {
    if (format_kind(view) != kind || view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s%d array, got format '%s'", name,
                     kind == 'i' ? "int" : (kind == 'u' ? "uint" : "float"), (int)(itemsize * 8),
                     view->format ? view->format : "B");
        return -1;
    }
    return 0;
}

static int check_int_kind(const Py_buffer *view, const char *name) {
    if (format_kind(view) != 'i' || (view->itemsize != 4 && view->itemsize != 8)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int32 or int64 array, got format '%s'",
                     name, view->format ? view->format : "B");
        return -1;
    }
    return 0;
}

/* --- sample index -------------------------------------------------------------------------- */

/* Sample k starts at token k * seq_len of the stream of documents in doc_idx order (samples span
 * seq_len + 1 tokens, so each one shares its last token with the next). Row k of `out` is (position
 * in doc_idx, offset) of that token: the document that contains it, skipping empty documents,
 * except row 0 which is always (0, 0). One pass over doc_idx; the inner loop runs once per sample
 * boundary that falls inside the current document. */
/* doc_idx is shuffled, so sizes[doc_idx[j]] is a random read; asking for it this many documents
 * early hides most of its latency (the reads do not depend on each other). */
#define PREFETCH_AHEAD 16

#define SAMPLE_IDX_LOOP(DOC_T, OUT_T)                                                         \
    do {                                                                                      \
        const DOC_T *docs = (const DOC_T *)doc_view.buf;                                      \
        OUT_T *o = (OUT_T *)out_view.buf;                                                     \
        o[0] = 0;                                                                             \
        o[1] = 0;                                                                             \
        int64_t k = 1, next = seq_len, start = 0;                                             \
        for (Py_ssize_t j = 0; j < n_docs && k < rows; j++) {                                 \
            if (j + PREFETCH_AHEAD < n_docs) {                                                \
                int64_t ahead = (int64_t)docs[j + PREFETCH_AHEAD];                            \
                if (ahead >= 0 && ahead < n_sizes) __builtin_prefetch(sizes + ahead);          \
            }                                                                                 \
            int64_t d = (int64_t)docs[j];                                                     \
            if (d < 0 || d >= n_sizes) {                                                      \
                bad = 1;                                                                      \
                bad_doc = d;                                                                  \
                break;                                                                        \
            }                                                                                 \
            int64_t end = start + (int64_t)sizes[d];                                          \
            /* Most documents hold no boundary and the rest mostly one, unpredictably: record  \
             * slot k unconditionally (k < rows here) and advance k only when it was one. */   \
            o[2 * k] = (OUT_T)j;                                                              \
            o[2 * k + 1] = (OUT_T)(next - start);                                             \
            const int64_t hit = next < end;                                                   \
            k += hit;                                                                         \
            next += hit * seq_len;                                                            \
            while (next < end && k < rows) {                                                  \
                o[2 * k] = (OUT_T)j;                                                          \
                o[2 * k + 1] = (OUT_T)(next - start);                                         \
                k++;                                                                          \
                next += seq_len;                                                              \
            }                                                                                 \
            start = end;                                                                      \
        }                                                                                     \
        filled = k;                                                                           \
    } while (0)

static PyObject *build_sample_idx(PyObject *self, PyObject *args) {
    PyObject *sizes_obj, *doc_obj, *out_obj;
    long long seq_len_ll;
    if (!PyArg_ParseTuple(args, "OOLO", &sizes_obj, &doc_obj, &seq_len_ll, &out_obj)) {
        return NULL;
    }
    if (seq_len_ll < 1) {
        PyErr_SetString(PyExc_ValueError, "seq_len must be at least 1");
        return NULL;
    }
    Py_buffer sizes_view, doc_view, out_view;
    if (get_buffer(sizes_obj, &sizes_view, 0) != 0) return NULL;
    if (get_buffer(doc_obj, &doc_view, 0) != 0) {
        PyBuffer_Release(&sizes_view);
        return NULL;
    }
    if (get_buffer(out_obj, &out_view, 1) != 0) {
        PyBuffer_Release(&sizes_view);
        PyBuffer_Release(&doc_view);
        return NULL;
    }
    PyObject *result = NULL;
    if (check_kind(&sizes_view, 'i', 4, "sizes") != 0 || check_int_kind(&doc_view, "doc_idx") != 0 ||
        check_int_kind(&out_view, "out") != 0) {
        goto done;
    }
    if (out_view.ndim != 2 || out_view.shape[1] != 2 || out_view.shape[0] < 1) {
        PyErr_SetString(PyExc_ValueError, "out must have shape [num_samples + 1, 2]");
        goto done;
    }
    {
        const int32_t *sizes = (const int32_t *)sizes_view.buf;
        const int64_t n_sizes = sizes_view.len / 4;
        const Py_ssize_t n_docs = doc_view.len / doc_view.itemsize;
        const int64_t rows = out_view.shape[0];
        const int64_t seq_len = seq_len_ll;
        int64_t filled = 0, bad_doc = 0;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        if (doc_view.itemsize == 4 && out_view.itemsize == 4) SAMPLE_IDX_LOOP(int32_t, int32_t);
        else if (doc_view.itemsize == 4) SAMPLE_IDX_LOOP(int32_t, int64_t);
        else if (out_view.itemsize == 4) SAMPLE_IDX_LOOP(int64_t, int32_t);
        else SAMPLE_IDX_LOOP(int64_t, int64_t);
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_Format(PyExc_IndexError, "doc_idx holds document %lld, outside sizes [0, %lld)",
                         (long long)bad_doc, (long long)n_sizes);
            goto done;
        }
        if (filled < rows) {
            PyErr_Format(PyExc_ValueError,
                         "documents in doc_idx hold too few tokens for %lld samples (filled %lld)",
                         (long long)(rows - 1), (long long)(filled - 1));
            goto done;
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&sizes_view);
    PyBuffer_Release(&doc_view);
    PyBuffer_Release(&out_view);
    return result;
}

/* --- blending ------------------------------------------------------------------------------ */

/* Greedy "largest error" rule: sample i goes to the dataset whose count lags furthest behind
 * weight * max(i, 1); ties go to the lowest index. Same arithmetic (doubles, same order) as the
 * upstream loop, so the output is identical. */
static PyObject *build_blending_indices(PyObject *self, PyObject *args) {
    PyObject *w_obj, *di_obj, *si_obj;
    if (!PyArg_ParseTuple(args, "OOO", &w_obj, &di_obj, &si_obj)) {
        return NULL;
    }
    Py_buffer w_view, di_view, si_view;
    if (get_buffer(w_obj, &w_view, 0) != 0) return NULL;
    if (get_buffer(di_obj, &di_view, 1) != 0) {
        PyBuffer_Release(&w_view);
        return NULL;
    }
    if (get_buffer(si_obj, &si_view, 1) != 0) {
        PyBuffer_Release(&w_view);
        PyBuffer_Release(&di_view);
        return NULL;
    }
    PyObject *result = NULL;
    int64_t *counts = NULL;
    if (check_kind(&w_view, 'f', 8, "weights") != 0 || check_kind(&si_view, 'i', 8, "dataset_sample_index") != 0) {
        goto done;
    }
    if ((format_kind(&di_view) != 'u' || di_view.itemsize != 1) &&
        (format_kind(&di_view) != 'i' || di_view.itemsize != 2)) {
        PyErr_SetString(PyExc_TypeError, "dataset_index: expected a uint8 or int16 array");
        goto done;
    }
    {
        const double *w = (const double *)w_view.buf;
        const Py_ssize_t n_sets = w_view.len / 8;
        const Py_ssize_t size = si_view.len / 8;
        if (n_sets < 1 || di_view.len / di_view.itemsize != size) {
            PyErr_SetString(PyExc_ValueError, "need at least one weight and equal output lengths");
            goto done;
        }
        if ((di_view.itemsize == 1 && n_sets > 255) || n_sets > 32767) {
            PyErr_SetString(PyExc_ValueError, "too many datasets for the dataset_index dtype");
            goto done;
        }
        counts = (int64_t *)PyMem_Calloc((size_t)n_sets, sizeof(int64_t));
        if (counts == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        uint8_t *di8 = (uint8_t *)di_view.buf;
        int16_t *di16 = (int16_t *)di_view.buf;
        int64_t *si = (int64_t *)si_view.buf;
        const int narrow = di_view.itemsize == 1;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < size; i++) {
            const double t = i > 1 ? (double)i : 1.0;
            Py_ssize_t best = 0;
            double best_err = w[0] * t - (double)counts[0];
            for (Py_ssize_t d = 1; d < n_sets; d++) {
                const double err = w[d] * t - (double)counts[d];
                if (err > best_err) {
                    best_err = err;
                    best = d;
                }
            }
            if (narrow) di8[i] = (uint8_t)best;
            else di16[i] = (int16_t)best;
            si[i] = counts[best]++;
        }
        Py_END_ALLOW_THREADS
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_Free(counts);
    PyBuffer_Release(&w_view);
    PyBuffer_Release(&di_view);
    PyBuffer_Release(&si_view);
    return result;
}

/* --- numpy.random.RandomState.shuffle, bit for bit ----------------------------------------- */

/* RandomState is MT19937; its 1-D shuffle is Fisher-Yates from the back, drawing j in [0, i] with
 * numpy's legacy `random_interval` (mask, then reject), 32-bit draws while i fits in 32 bits. The
 * same draws here, with the generator inlined, give the same permutation and leave the generator
 * in the same state (the caller writes key/pos back into the RandomState). Arrays of 2**32 items or
 * more (64-bit draws) are refused; the caller leaves those to numpy. */
#define MT_N 624
#define MT_M 397

static void mt_regenerate(uint32_t *key) {
    const uint32_t upper = 0x80000000U, lower = 0x7fffffffU, matrix = 0x9908b0dfU;
    int i;
    uint32_t y;
    for (i = 0; i < MT_N - MT_M; i++) {
        y = (key[i] & upper) | (key[i + 1] & lower);
        key[i] = key[i + MT_M] ^ (y >> 1) ^ (-(y & 1) & matrix);
    }
    for (; i < MT_N - 1; i++) {
        y = (key[i] & upper) | (key[i + 1] & lower);
        key[i] = key[i + (MT_M - MT_N)] ^ (y >> 1) ^ (-(y & 1) & matrix);
    }
    y = (key[MT_N - 1] & upper) | (key[0] & lower);
    key[MT_N - 1] = key[MT_M - 1] ^ (y >> 1) ^ (-(y & 1) & matrix);
}

static inline uint32_t mt_next32(uint32_t *key, int *pos) {
    if (*pos >= MT_N) {
        mt_regenerate(key);
        *pos = 0;
    }
    uint32_t y = key[(*pos)++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

/* numpy's random_interval for max < 2**32: the smallest all-ones mask covering max, then reject. */
static inline uint32_t mt_interval(uint32_t *key, int *pos, uint32_t max) {
    if (max == 0) return 0;
    uint32_t mask = max, value;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    while ((value = (mt_next32(key, pos) & mask)) > max) {
    }
    return value;
}

#define SHUFFLE_LOOP(T)                                       \
    do {                                                      \
        T *a = (T *)arr_view.buf;                             \
        for (int64_t i = n - 1; i >= 1; i--) {                \
            int64_t j = (int64_t)mt_interval(key, &pos, (uint32_t)i); \
            T tmp = a[j];                                     \
            a[j] = a[i];                                      \
            a[i] = tmp;                                       \
        }                                                     \
    } while (0)

static PyObject *shuffle_mt19937(PyObject *self, PyObject *args) {
    PyObject *key_obj, *arr_obj;
    int pos;
    if (!PyArg_ParseTuple(args, "OiO", &key_obj, &pos, &arr_obj)) {
        return NULL;
    }
    Py_buffer key_view, arr_view;
    if (get_buffer(key_obj, &key_view, 1) != 0) return NULL;
    if (get_buffer(arr_obj, &arr_view, 1) != 0) {
        PyBuffer_Release(&key_view);
        return NULL;
    }
    PyObject *result = NULL;
    if (check_kind(&key_view, 'u', 4, "key") != 0) goto done;
    if (key_view.len != MT_N * 4 || pos < 0 || pos > MT_N) {
        PyErr_SetString(PyExc_ValueError, "key must hold 624 uint32 words and 0 <= pos <= 624");
        goto done;
    }
    if (arr_view.itemsize != 1 && arr_view.itemsize != 2 && arr_view.itemsize != 4 && arr_view.itemsize != 8) {
        PyErr_SetString(PyExc_TypeError, "array items must be 1, 2, 4 or 8 bytes");
        goto done;
    }
    if (arr_view.len / arr_view.itemsize > (Py_ssize_t)0xffffffffLL) {
        PyErr_SetString(PyExc_ValueError, "arrays of 2**32 items or more are shuffled by numpy");
        goto done;
    }
    {
        uint32_t *key = (uint32_t *)key_view.buf;
        const int64_t n = arr_view.len / arr_view.itemsize;
        Py_BEGIN_ALLOW_THREADS
        switch (arr_view.itemsize) {
            case 1: SHUFFLE_LOOP(uint8_t); break;
            case 2: SHUFFLE_LOOP(uint16_t); break;
            case 4: SHUFFLE_LOOP(uint32_t); break;
            default: SHUFFLE_LOOP(uint64_t); break;
        }
        Py_END_ALLOW_THREADS
    }
    result = PyLong_FromLong(pos);
done:
    PyBuffer_Release(&key_view);
    PyBuffer_Release(&arr_view);
    return result;
}

static PyMethodDef methods[] = {
    {"build_sample_idx", build_sample_idx, METH_VARARGS,
     "build_sample_idx(sizes int32, doc_idx int32|int64, seq_len, out int32|int64 [S+1, 2])"},
    {"build_blending_indices", build_blending_indices, METH_VARARGS,
     "build_blending_indices(weights float64, dataset_index uint8|int16, dataset_sample_index int64)"},
    {"shuffle_mt19937", shuffle_mt19937, METH_VARARGS,
     "shuffle_mt19937(key uint32[624], pos, array) -> pos: RandomState.shuffle on raw MT state"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sample_index_c",
    "C hot loops of llama_data's sample index (optional; numpy twins exist).", -1, methods,
};

PyMODINIT_FUNC PyInit__sample_index_c(void) { return PyModule_Create(&module); }
