// edgediff C++17 wrapper over the C API: RAII pipeline, exceptions with the library's message,
// images as owned RGB8 buffers. Header-only; link edgediff::edgediff.
#ifndef EDGEDIFF_HPP
#define EDGEDIFF_HPP

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "edgediff.h"

namespace edgediff {

// A failed call: what() is the library's message, status() its code.
class Error : public std::runtime_error {
  public:
    Error(edgediff_status status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    edgediff_status status() const noexcept { return status_; }

  private:
    edgediff_status status_;
};

// One RGB8 image, rows top to bottom.
class Image {
  public:
    Image(int width, int height, std::vector<std::uint8_t> pixels)
        : width_(width), height_(height), pixels_(std::move(pixels)) {}
    int width() const noexcept { return width_; }
    int height() const noexcept { return height_; }
    const std::uint8_t *data() const noexcept { return pixels_.data(); }
    std::size_t size() const noexcept { return pixels_.size(); }
    const std::vector<std::uint8_t> &pixels() const noexcept { return pixels_; }
    // Pointer to the 3 bytes (R, G, B) of pixel (x, y).
    const std::uint8_t *at(int x, int y) const { return pixels_.data() + (std::size_t(y) * width_ + x) * 3; }

  private:
    int width_, height_;
    std::vector<std::uint8_t> pixels_;
};

namespace detail {
// The C API's defaults, read once: edgediff.runtime.request owns them, so this header writes none.
inline const edgediff_request &request_defaults() {
    static const edgediff_request defaults = edgediff_request_defaults();
    return defaults;
}
}  // namespace detail

struct Request {
    std::string prompt;
    std::optional<std::string> negative_prompt;
    int steps = detail::request_defaults().steps;
    float guidance = detail::request_defaults().guidance;
    std::uint64_t seed = detail::request_defaults().seed;
    int height = detail::request_defaults().height;  // 0: the model's default size
    int width = detail::request_defaults().width;
    int count = detail::request_defaults().count;
    // Called after each step with (step, steps); return false to cancel (throws Error).
    std::function<bool(int, int)> progress;
    // Edit this picture instead of starting from noise (image-to-image); with a mask (one byte
    // a pixel, the image's size: 255 repaints, 0 keeps), repaint only there (inpainting).
    std::optional<Image> image;
    std::vector<std::uint8_t> mask;
    float strength = detail::request_defaults().strength;  // 0: the default
};

struct Options {
    std::string backend = "ort-cpu";
    std::string precision;  // empty: the bundle's defaults
    std::string decoder;    // empty or "full": the VAE decoder; "tiny": a distilled bundle's
};

// A loaded bundle. Movable, not copyable; safe to share between threads (calls serialise).
class Pipeline {
  public:
    // bundle_dir empty: the model shipped with edgediff.
    explicit Pipeline(const std::string &bundle_dir = "", const Options &options = {}) {
        edgediff_options c_options{options.backend.c_str(),
                                   options.precision.empty() ? nullptr : options.precision.c_str(),
                                   options.decoder.empty() ? nullptr : options.decoder.c_str()};
        edgediff_status status = edgediff_open(bundle_dir.empty() ? nullptr : bundle_dir.c_str(),
                                               &c_options, &pipe_);
        if (status != EDGEDIFF_OK) {
            std::string message = edgediff_last_error(pipe_);
            edgediff_close(pipe_);
            throw Error(status, message);
        }
    }
    ~Pipeline() { edgediff_close(pipe_); }
    Pipeline(Pipeline &&other) noexcept : pipe_(std::exchange(other.pipe_, nullptr)) {}
    Pipeline &operator=(Pipeline &&other) noexcept {
        std::swap(pipe_, other.pipe_);
        return *this;
    }
    Pipeline(const Pipeline &) = delete;
    Pipeline &operator=(const Pipeline &) = delete;

    std::vector<Image> generate(const Request &request) {
        edgediff_request c = edgediff_request_defaults();
        c.prompt = request.prompt.c_str();
        c.negative_prompt = request.negative_prompt ? request.negative_prompt->c_str() : nullptr;
        c.steps = request.steps;
        c.guidance = request.guidance;
        c.seed = request.seed;
        c.height = request.height;
        c.width = request.width;
        c.count = request.count;
        if (request.image) {
            c.image = request.image->data();
            c.image_height = request.image->height();
            c.image_width = request.image->width();
        }
        if (!request.mask.empty()) {
            const std::size_t need = request.image ? std::size_t(c.image_height) * c.image_width : 0;
            if (request.mask.size() != need)
                throw Error(EDGEDIFF_ERROR_INVALID_ARGUMENT,
                            "the mask has " + std::to_string(request.mask.size()) +
                                " bytes; it needs one per pixel of the image (" +
                                std::to_string(need) + ")");
            c.mask = request.mask.data();
        }
        c.strength = request.strength;
        if (request.progress) {
            c.progress = [](void *user, int step, int steps) -> int {
                return (*static_cast<const std::function<bool(int, int)> *>(user))(step, steps) ? 0 : 1;
            };
            c.progress_user = const_cast<std::function<bool(int, int)> *>(&request.progress);
        }
        edgediff_image out;
        edgediff_status status = edgediff_generate(pipe_, &c, &out);
        if (status != EDGEDIFF_OK) throw Error(status, edgediff_last_error(pipe_));
        std::vector<Image> images;
        const std::size_t each = std::size_t(out.height) * out.width * 3;
        for (int i = 0; i < out.count; ++i) {
            const std::uint8_t *first = out.pixels + i * each;
            images.emplace_back(out.width, out.height, std::vector<std::uint8_t>(first, first + each));
        }
        edgediff_image_free(&out);
        return images;
    }

  private:
    edgediff_pipeline *pipe_ = nullptr;
};

inline std::string version() { return edgediff_version(); }

}  // namespace edgediff

#endif  // EDGEDIFF_HPP
