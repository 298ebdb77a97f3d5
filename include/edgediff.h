/* edgediff: text-to-image generation from an edgediff bundle, as a C99 API.
 *
 * One opaque handle per loaded pipeline. Every call returns an edgediff_status; on failure
 * edgediff_last_error(pipe) says what went wrong and how to fix it.
 *
 * Thread safety: calls on one handle are serialised by the handle itself, so a handle may be
 * shared between threads; separate handles may be used from separate threads at once. The
 * library keeps no state an application can see besides its handles.
 *
 * This implementation embeds edgediff's Python runtime (numpy + ONNX Runtime); the ABI is
 * designed so that a native implementation can replace it without changing applications.
 */
#ifndef EDGEDIFF_H
#define EDGEDIFF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EDGEDIFF_API __declspec(dllimport)
#else
#define EDGEDIFF_API __attribute__((visibility("default")))
#endif

/* The ABI version: bumped only when a struct or signature below changes incompatibly.
 * 2: edgediff_options gained `decoder` (a library of ABI 2 reads it from an options struct
 *    built against ABI 1, so rebuild applications against this header).
 * 3: edgediff_request gained image, image_height, image_width, mask and strength (edits).
 */
#define EDGEDIFF_ABI_VERSION 3

typedef enum edgediff_status {
    EDGEDIFF_OK = 0,
    EDGEDIFF_ERROR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad size, steps, count, ... */
    EDGEDIFF_ERROR_BUNDLE = 2,           /* missing, corrupt or mismatched bundle files */
    EDGEDIFF_ERROR_BACKEND = 3,          /* the backend is not installed or cannot run here */
    EDGEDIFF_ERROR_CANCELLED = 4,        /* the progress callback asked to stop */
    EDGEDIFF_ERROR_INTERNAL = 5          /* anything else; the message says what */
} edgediff_status;

typedef struct edgediff_pipeline edgediff_pipeline;

/* Called after each denoising step (step = 1..steps). Return non-zero to cancel. */
typedef int (*edgediff_progress_fn)(void *user, int step, int steps);

typedef struct edgediff_options {
    const char *backend;   /* "ort-cpu" (NULL), "ort-cuda", "ort-trt" or "trt" */
    const char *precision; /* "fp32", "fp16", "int8", "fp8"; NULL: the bundle's defaults */
    const char *decoder;   /* "full" (NULL) or "tiny": a distilled bundle's tiny VAE decoder */
} edgediff_options;

typedef struct edgediff_request {
    const char *prompt;          /* required, UTF-8 */
    const char *negative_prompt; /* NULL: none */
    int steps;                   /* DDIM steps, >= 1 (0: the bundle's recommended count) */
    float guidance;              /* classifier-free guidance scale; <= 1 turns it off
                                    (negative: the bundle's recommended scale) */
    uint64_t seed;               /* same seed, same request, same pixels */
    int height, width;           /* pixels, multiples of the model's size step; 0: default */
    int count;                   /* images to make, >= 1 (0: the default) */
    edgediff_progress_fn progress; /* NULL: none */
    void *progress_user;         /* passed back to progress as `user` */
    /* Image-to-image and inpainting; image NULL: text to image. The buffers are read during
     * the call only. The image is used at its size if that is a multiple of the model's size
     * step; with height and width set, it is resized to them. */
    const uint8_t *image;        /* image_height x image_width RGB8, rows top to bottom */
    int image_height, image_width;
    const uint8_t *mask;         /* NULL: image-to-image; else image_height x image_width L8:
                                    255 repaints, 0 keeps (inpainting) */
    float strength;              /* how far to depart from the image, in (0, 1]
                                    (0: the default, 0.75; 1 with a mask) */
} edgediff_request;

/* `count` RGB8 images of height x width, one after another, rows top to bottom. */
typedef struct edgediff_image {
    int count, height, width;
    uint8_t *pixels; /* count * height * width * 3 bytes, owned by the library */
} edgediff_image;

/* "0.1.0": the edgediff version behind this library. */
EDGEDIFF_API const char *edgediff_version(void);
/* EDGEDIFF_ABI_VERSION of the library actually loaded. */
EDGEDIFF_API int edgediff_abi_version(void);

/* Default request values, those of edgediff.runtime.request as this library was built with
 * (today steps 0, guidance -1, seed 0, count 1), and the model's default size. Steps 0 runs the
 * bundle's recommended count (8 for a bundle that recommends none), a negative guidance its
 * recommended scale (3 for a bundle that recommends none); a count of 0 takes the default of
 * the edgediff package the library runs. */
EDGEDIFF_API edgediff_request edgediff_request_defaults(void);

/* Load the bundle in `bundle_dir` (NULL: the model shipped with edgediff). As with
 * sqlite3_open, *pipe receives a handle even when loading fails, so that
 * edgediff_last_error(*pipe) can say why; close it with edgediff_close either way.
 * `options` may be NULL. */
EDGEDIFF_API edgediff_status edgediff_open(const char *bundle_dir, const edgediff_options *options,
                                           edgediff_pipeline **pipe);

/* Generate the request's images into *out. On success release them with edgediff_image_free;
 * on failure *out is left empty ({0, 0, 0, NULL}). */
EDGEDIFF_API edgediff_status edgediff_generate(edgediff_pipeline *pipe, const edgediff_request *request,
                                               edgediff_image *out);

EDGEDIFF_API void edgediff_image_free(edgediff_image *image);

/* The message of the handle's last failure ("" after a success); valid until the next call on
 * the handle. edgediff_last_error(NULL) describes a NULL-handle misuse. */
EDGEDIFF_API const char *edgediff_last_error(const edgediff_pipeline *pipe);

/* Release the pipeline (NULL is allowed). */
EDGEDIFF_API void edgediff_close(edgediff_pipeline *pipe);

#ifdef __cplusplus
}
#endif

#endif /* EDGEDIFF_H */
