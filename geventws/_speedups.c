/* Compiled fast paths for geventws.
 *
 * apply_mask(data, mask) -> bytes: XOR-unmasking of frame payloads (RFC 6455 5.3).
 * `data` is any bytes-like object, `mask` exactly four bytes. The pure-Python fallback
 * in frames.py gives the same results; the tests run both. Works eight bytes at a time
 * through memcpy, which compilers turn into plain unaligned loads and stores (and
 * vectorise).
 *
 * send_nowait(fds, data) -> list[tuple[int, int]]: one non-blocking send(2) of `data`
 * on each socket descriptor, for broadcasts. Returns only the sends that did not take
 * all of `data`, as (index in fds, bytes sent, 0 when it would block, or -errno).
 * Never blocks and never raises SIGPIPE; a descriptor outside 0..INT_MAX raises
 * ValueError before anything is sent. The fallback in _sockets.py does the same
 * with os.write.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#ifndef _WIN32
#include <sys/socket.h>
#endif

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

#ifndef _WIN32
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* Python ignores SIGPIPE anyway */
#endif

static PyObject *
send_nowait(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fds, *result = NULL;
    Py_buffer data;
    Py_ssize_t i, count;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_nowait() takes fds and data");
        return NULL;
    }
    fds = PySequence_Fast(args[0], "fds must be a sequence of descriptors");
    if (fds == NULL)
        return NULL;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        Py_DECREF(fds);
        return NULL;
    }
    count = PySequence_Fast_GET_SIZE(fds);
    /* Check every descriptor before sending anything: one out of range is refused, never
     * truncated into another descriptor. */
    for (i = 0; i < count; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fds, i));

        if (fd == -1 && PyErr_Occurred())
            goto done;
        if (fd < 0 || fd > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "descriptor out of range: %ld", fd);
            goto done;
        }
    }
    result = PyList_New(0);
    if (result == NULL)
        goto done;
    for (i = 0; i < count; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fds, i));
        ssize_t sent;
        long value;
        PyObject *item;
        int failed;

        do {
            sent = send((int)fd, data.buf, (size_t)data.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (sent < 0 && errno == EINTR);
        if (sent == data.len)
            continue;
        if (sent >= 0)
            value = (long)sent;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            value = 0;
        else
            value = -(long)errno;
        item = Py_BuildValue("(nl)", i, value);
        if (item == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        failed = PyList_Append(result, item);
        Py_DECREF(item);
        if (failed) {
            Py_CLEAR(result);
            goto done;
        }
    }

done:
    PyBuffer_Release(&data);
    Py_DECREF(fds);
    return result;
}
#endif

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask) -> bytes: XOR data with the 4-byte mask repeated."},
#ifndef _WIN32
    {"send_nowait", (PyCFunction)(void (*)(void))send_nowait, METH_FASTCALL,
     "send_nowait(fds, data) -> [(index, sent)] for the sends that did not take all of"
     " data (sent 0: would block, <0: -errno)."},
#endif
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
