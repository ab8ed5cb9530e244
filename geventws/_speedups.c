/* Compiled fast path for geventws: XOR-unmasking of frame payloads (RFC 6455 5.3).
 *
 * apply_mask(data, mask) -> bytes. `data` is any bytes-like object, `mask` exactly four
 * bytes. The pure-Python fallback in frames.py gives the same results; the tests run
 * both. Works eight bytes at a time through memcpy, which compilers turn into plain
 * unaligned loads and stores (and vectorise).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *
apply_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result = NULL;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask(data, mask) takes two arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        goto done;
    }

    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL)
        goto done;
    {
        const unsigned char *in = (const unsigned char *)data.buf;
        const unsigned char *m = (const unsigned char *)mask.buf;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        Py_ssize_t len = data.len, i = 0;
        uint32_t m32;
        uint64_t m64, v;

        memcpy(&m32, m, 4);
        m64 = ((uint64_t)m32 << 32) | m32;
        for (; i + 8 <= len; i += 8) {
            memcpy(&v, in + i, 8);
            v ^= m64;
            memcpy(out + i, &v, 8);
        }
        for (; i < len; i++)
            out[i] = in[i] ^ m[i & 3];
    }

done:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask) -> bytes: XOR data with the 4-byte mask repeated."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "geventws._speedups", "Compiled fast paths for geventws.", -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
