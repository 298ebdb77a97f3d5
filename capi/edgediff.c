/* libedgediff: the C API of include/edgediff.h over edgediff's Python runtime (CPython
 * embedding). Python is started once per process, on first use, from the interpreter the
 * library was configured with (EDGEDIFF_PYTHON overrides it at run time); if the application
 * already runs Python, that interpreter is used. Each handle holds one edgediff.capi.CPipeline
 * and a mutex; the GIL is taken only around Python calls and released between them. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgediff.h"

#ifndef EDGEDIFF_DEFAULT_PYTHON
#define EDGEDIFF_DEFAULT_PYTHON ""
#endif
#ifndef EDGEDIFF_VERSION
#define EDGEDIFF_VERSION "unknown"
#endif
/* edgediff.runtime.request owns the generation defaults; CMakeLists.txt reads them from the
 * configured Python, so that a copy written here cannot drift from the CLI's and Python's. */
#if !defined(EDGEDIFF_DEFAULT_STEPS) || !defined(EDGEDIFF_DEFAULT_GUIDANCE) || \
    !defined(EDGEDIFF_DEFAULT_COUNT) || !defined(EDGEDIFF_DEFAULT_SEED)
#error "EDGEDIFF_DEFAULT_STEPS/GUIDANCE/COUNT/SEED are undefined: build with CMakeLists.txt, which reads them from edgediff.runtime.request"
#endif

struct edgediff_pipeline {
    pthread_mutex_t lock;
    PyObject *py;           /* edgediff.capi.CPipeline, or NULL if opening failed */
    edgediff_status opened; /* how edgediff_open ended */
    char *error;            /* message of the last failure, or NULL */
    char *open_error;       /* why edgediff_open failed, or NULL */
};

/* Process-wide, written once under pthread_once: the interpreter and edgediff.capi. */
static pthread_once_t python_once = PTHREAD_ONCE_INIT;
static PyObject *capi_module;
static char python_error[1024];

static const char null_handle_error[] =
    "the pipeline handle is NULL. Pass the handle edgediff_open returned";

static void set_error(edgediff_pipeline *pipe, const char *format, ...) {
    va_list args;
    va_start(args, format);
    char buffer[2048];
    vsnprintf(buffer, sizeof buffer, format, args);
    va_end(args);
    free(pipe->error);
    pipe->error = strdup(buffer);
}

/* The pending Python exception as a status code and a message; clears it. GIL held. */
static edgediff_status take_python_error(char *message, size_t size) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    edgediff_status status = EDGEDIFF_ERROR_INTERNAL;
    if (capi_module != NULL && value != NULL) {
        PyObject *code = PyObject_CallMethod(capi_module, "status_of", "O", value);
        if (code != NULL) {
            status = (edgediff_status)PyLong_AsLong(code);
            Py_DECREF(code);
        }
        PyErr_Clear();
    }
    PyObject *text = value != NULL ? PyObject_Str(value) : NULL;
    const char *utf8 = text != NULL ? PyUnicode_AsUTF8(text) : NULL;
    if (status == EDGEDIFF_ERROR_INTERNAL && type != NULL) {
        snprintf(message, size, "%s: %s", ((PyTypeObject *)type)->tp_name,
                 utf8 != NULL ? utf8 : "(no message)");
    } else {
        snprintf(message, size, "%s", utf8 != NULL ? utf8 : "(no message)");
    }
    PyErr_Clear();
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return status;
}

static void start_python(void) {
    if (!Py_IsInitialized()) {
        PyConfig config;
        PyConfig_InitPythonConfig(&config);
        config.install_signal_handlers = 0; /* the application's signals stay its own */
        config.parse_argv = 0;
        const char *python = getenv("EDGEDIFF_PYTHON");
        if (python == NULL || *python == '\0') python = EDGEDIFF_DEFAULT_PYTHON;
        PyStatus status = PyStatus_Ok();
        if (*python != '\0') /* a venv's python: its pyvenv.cfg brings its site-packages */
            status = PyConfig_SetBytesString(&config, &config.program_name, python);
        if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(status)) {
            snprintf(python_error, sizeof python_error, "Python did not start (%s). Set "
                     "EDGEDIFF_PYTHON to the python of an environment with edgediff installed",
                     status.err_msg != NULL ? status.err_msg : "unknown error");
            return;
        }
        PyEval_SaveThread(); /* release the GIL: every call takes it when it needs it */
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    capi_module = PyImport_ImportModule("edgediff.capi");
    if (capi_module == NULL) {
        char message[900];
        take_python_error(message, sizeof message);
        snprintf(python_error, sizeof python_error, "edgediff's Python package cannot be "
                 "imported (%s). Set EDGEDIFF_PYTHON to the python of an environment with "
                 "edgediff installed", message);
    }
    PyGILState_Release(gil);
}

const char *edgediff_version(void) { return EDGEDIFF_VERSION; }

int edgediff_abi_version(void) { return EDGEDIFF_ABI_VERSION; }

edgediff_request edgediff_request_defaults(void) {
    edgediff_request request;
    memset(&request, 0, sizeof request);
    request.steps = EDGEDIFF_DEFAULT_STEPS;
    request.guidance = (float)EDGEDIFF_DEFAULT_GUIDANCE;
    request.seed = EDGEDIFF_DEFAULT_SEED;
    request.count = EDGEDIFF_DEFAULT_COUNT;
    return request;
}

edgediff_status edgediff_open(const char *bundle_dir, const edgediff_options *options,
                              edgediff_pipeline **pipe) {
    if (pipe == NULL) return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    edgediff_pipeline *p = calloc(1, sizeof *p);
    *pipe = p;
    if (p == NULL) return EDGEDIFF_ERROR_INTERNAL;
    pthread_mutex_init(&p->lock, NULL);
    pthread_once(&python_once, start_python);
    if (capi_module == NULL) {
        set_error(p, "%s", python_error);
        p->open_error = strdup(p->error);
        return p->opened = EDGEDIFF_ERROR_BACKEND;
    }
    const char *backend = options != NULL && options->backend != NULL ? options->backend : "";
    const char *precision =
        options != NULL && options->precision != NULL ? options->precision : "";
    const char *decoder = options != NULL && options->decoder != NULL ? options->decoder : "";
    PyGILState_STATE gil = PyGILState_Ensure();
    p->py = PyObject_CallMethod(capi_module, "CPipeline", "ssss", bundle_dir ? bundle_dir : "",
                                backend, precision, decoder);
    p->opened = EDGEDIFF_OK;
    if (p->py == NULL) {
        char message[2048];
        p->opened = take_python_error(message, sizeof message);
        set_error(p, "%s", message);
        p->open_error = strdup(message);
    }
    PyGILState_Release(gil);
    return p->opened;
}

/* Sides beyond this make buffers whose byte count overflows what a caller can mean. */
#define MAX_IMAGE_SIDE 32768

/* A buffer of the request as a Python bytes object, or None for NULL (a new reference). */
static PyObject *bytes_or_none(const uint8_t *data, size_t size) {
    if (data == NULL) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)size);
}

static edgediff_status check_request(edgediff_pipeline *pipe, const edgediff_request *r) {
    if (r == NULL) {
        set_error(pipe, "the request is NULL. Pass an edgediff_request "
                        "(edgediff_request_defaults() gives one)");
        return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    }
    if (r->prompt == NULL) {
        set_error(pipe, "request.prompt is NULL. Set it to a UTF-8 prompt");
        return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    }
    if (r->steps < 0 || r->count < 0 || r->height < 0 || r->width < 0) {
        set_error(pipe, "request has a negative steps, count, height or width. Use 0 for "
                        "the defaults or positive values");
        return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    }
    if (r->image == NULL && (r->mask != NULL || r->strength != 0.0f)) {
        set_error(pipe, "request.mask and request.strength edit request.image, which is NULL. "
                        "Set request.image (RGB8) or leave them 0");
        return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    }
    if (r->image != NULL && (r->image_height <= 0 || r->image_width <= 0 ||
                             r->image_height > MAX_IMAGE_SIDE || r->image_width > MAX_IMAGE_SIDE)) {
        set_error(pipe, "request.image is %d x %d. Set image_height and image_width to its "
                        "size in pixels, 1 to %d", r->image_height, r->image_width,
                  MAX_IMAGE_SIDE);
        return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    }
    if (pipe->py == NULL) {
        set_error(pipe, "the pipeline did not open (%s), so it cannot generate",
                  pipe->open_error != NULL ? pipe->open_error : "see edgediff_open's status");
        return pipe->opened;
    }
    return EDGEDIFF_OK;
}

edgediff_status edgediff_generate(edgediff_pipeline *pipe, const edgediff_request *request,
                                  edgediff_image *out) {
    if (out != NULL) memset(out, 0, sizeof *out);
    if (pipe == NULL) return EDGEDIFF_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&pipe->lock);
    free(pipe->error);
    pipe->error = NULL;
    edgediff_status status = EDGEDIFF_OK;
    if (out == NULL) {
        set_error(pipe, "the output image pointer is NULL. Pass an edgediff_image to fill");
        status = EDGEDIFF_ERROR_INVALID_ARGUMENT;
    } else {
        status = check_request(pipe, request);
    }
    if (status != EDGEDIFF_OK) {
        pthread_mutex_unlock(&pipe->lock);
        return status;
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    /* steps or count 0 go through as 0: edgediff.capi applies the runtime's default, so the
     * installed Python package, not this build, decides what "default" means. */
    size_t pixels = request->image == NULL
                        ? 0
                        : (size_t)request->image_height * (size_t)request->image_width;
    PyObject *image = bytes_or_none(request->image, pixels * 3);
    PyObject *mask = bytes_or_none(request->image == NULL ? NULL : request->mask, pixels);
    PyObject *result = NULL;
    if (image != NULL && mask != NULL) {
        result = PyObject_CallMethod(
            pipe->py, "generate", "szidKiiiKKOiiOd", request->prompt, request->negative_prompt,
            request->steps, (double)request->guidance, (unsigned long long)request->seed,
            request->height, request->width, request->count,
            (unsigned long long)(uintptr_t)request->progress,
            (unsigned long long)(uintptr_t)request->progress_user, image,
            request->image_height, request->image_width, mask, (double)request->strength);
    }
    Py_XDECREF(image);
    Py_XDECREF(mask);
    const char *bytes = NULL;
    Py_ssize_t size = 0;
    int count = 0, height = 0, width = 0;
    if (result == NULL ||
        !PyArg_ParseTuple(result, "y#iii", &bytes, &size, &count, &height, &width)) {
        char message[2048];
        status = take_python_error(message, sizeof message);
        set_error(pipe, "%s", message);
    } else if ((out->pixels = malloc((size_t)size)) == NULL) {
        set_error(pipe, "out of memory for %zd bytes of pixels", size);
        status = EDGEDIFF_ERROR_INTERNAL;
    } else {
        memcpy(out->pixels, bytes, (size_t)size);
        out->count = count;
        out->height = height;
        out->width = width;
    }
    Py_XDECREF(result);
    PyGILState_Release(gil);
    pthread_mutex_unlock(&pipe->lock);
    return status;
}

void edgediff_image_free(edgediff_image *image) {
    if (image == NULL) return;
    free(image->pixels);
    memset(image, 0, sizeof *image);
}

const char *edgediff_last_error(const edgediff_pipeline *pipe) {
    if (pipe == NULL) return null_handle_error;
    return pipe->error != NULL ? pipe->error : "";
}

void edgediff_close(edgediff_pipeline *pipe) {
    if (pipe == NULL) return;
    if (pipe->py != NULL) {
        PyGILState_STATE gil = PyGILState_Ensure();
        /* Release sessions, device buffers and streams now, not whenever Python collects. */
        PyObject *closed = PyObject_CallMethod(pipe->py, "close", NULL);
        if (closed == NULL) PyErr_Clear();
        Py_XDECREF(closed);
        Py_DECREF(pipe->py);
        PyGILState_Release(gil);
    }
    pthread_mutex_destroy(&pipe->lock);
    free(pipe->error);
    free(pipe->open_error);
    free(pipe);
}
