// The C API under test, driven by tests/test_capi.py:
//   capi_test pixels BUNDLE OUT.bin PROMPT SEED STEPS COUNT [DECODER]  raw RGB8 of one request
//   capi_test errors BUNDLE CORRUPT_BUNDLE                     each failure's status + message
//   capi_test threads BUNDLE                                   concurrent == sequential
//   capi_test time BUNDLE RUNS                                 seconds per default image
//   capi_test defaults BUNDLE                                  C, C++ and steps/count-0 defaults
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "edgediff.h"
#include "edgediff.hpp"

namespace {

int failures = 0;

void expect(bool ok, const std::string &what) {
    std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
    if (!ok) ++failures;
}

edgediff_pipeline *open_or_die(const char *bundle) {
    edgediff_pipeline *pipe = nullptr;
    if (edgediff_open(bundle, nullptr, &pipe) != EDGEDIFF_OK) {
        std::cerr << "open failed: " << edgediff_last_error(pipe) << "\n";
        std::exit(1);
    }
    return pipe;
}

int pixels(int argc, char **argv) {
    edgediff_options options{nullptr, nullptr, argc > 8 ? argv[8] : nullptr};
    edgediff_pipeline *pipe = nullptr;
    if (edgediff_open(argv[2], &options, &pipe) != EDGEDIFF_OK) {
        std::cerr << "open failed: " << edgediff_last_error(pipe) << "\n";
        return 1;
    }
    edgediff_request request = edgediff_request_defaults();
    request.prompt = argv[4];
    request.seed = std::strtoull(argv[5], nullptr, 10);
    request.steps = std::atoi(argv[6]);
    request.count = std::atoi(argv[7]);
    edgediff_image image;
    if (edgediff_generate(pipe, &request, &image) != EDGEDIFF_OK) {
        std::cerr << "generate failed: " << edgediff_last_error(pipe) << "\n";
        return 1;
    }
    std::ofstream(argv[3], std::ios::binary)
        .write(reinterpret_cast<const char *>(image.pixels),
               std::streamsize(size_t(image.count) * image.height * image.width * 3));
    std::cout << image.count << " " << image.height << " " << image.width << "\n";
    edgediff_image_free(&image);
    edgediff_close(pipe);
    return 0;
}

struct Counter {
    int calls = 0, cancel_at = 0, steps = 0;  // steps: the count the run reports (0 asks the bundle)
};

int count_and_cancel(void *user, int step, int steps) {
    auto *counter = static_cast<Counter *>(user);
    counter->calls = step;
    counter->steps = steps;
    return step >= counter->cancel_at;
}

bool mentions(const char *message, const char *part) { return std::strstr(message, part) != nullptr; }

int errors(char **argv) {
    edgediff_pipeline *pipe = nullptr;
    edgediff_status status = edgediff_open("/no/such/bundle", nullptr, &pipe);
    expect(status == EDGEDIFF_ERROR_BUNDLE && mentions(edgediff_last_error(pipe), "does not exist"),
           std::string("missing bundle: ") + edgediff_last_error(pipe));
    edgediff_request request = edgediff_request_defaults();
    request.prompt = "a red circle";
    edgediff_image image;
    status = edgediff_generate(pipe, &request, &image);
    expect(status == EDGEDIFF_ERROR_BUNDLE && image.pixels == nullptr &&
               mentions(edgediff_last_error(pipe), "did not open (bundle folder"),
           std::string("generate on a failed handle: ") + edgediff_last_error(pipe));
    edgediff_close(pipe);

    status = edgediff_open(argv[3], nullptr, &pipe);
    expect(status == EDGEDIFF_ERROR_BUNDLE && mentions(edgediff_last_error(pipe), "sha256"),
           std::string("corrupt bundle: ") + edgediff_last_error(pipe));
    edgediff_close(pipe);

    edgediff_options options{"no-such-backend", nullptr, nullptr};
    status = edgediff_open(argv[2], &options, &pipe);
    expect(status == EDGEDIFF_ERROR_BACKEND && mentions(edgediff_last_error(pipe), "unknown backend"),
           std::string("bad backend: ") + edgediff_last_error(pipe));
    edgediff_close(pipe);

    options = {nullptr, nullptr, "small"};
    status = edgediff_open(argv[2], &options, &pipe);
    expect(status == EDGEDIFF_ERROR_INVALID_ARGUMENT &&
               mentions(edgediff_last_error(pipe), "unknown decoder 'small'"),
           std::string("bad decoder: ") + edgediff_last_error(pipe));
    edgediff_close(pipe);

    pipe = open_or_die(argv[2]);
    request.height = 40;
    status = edgediff_generate(pipe, &request, &image);
    expect(status == EDGEDIFF_ERROR_INVALID_ARGUMENT && mentions(edgediff_last_error(pipe), "height 40"),
           std::string("invalid size: ") + edgediff_last_error(pipe));
    request.height = 0;
    request.guidance = std::nanf("");
    status = edgediff_generate(pipe, &request, &image);
    expect(status == EDGEDIFF_ERROR_INVALID_ARGUMENT &&
               mentions(edgediff_last_error(pipe), "guidance_scale must be a finite number"),
           std::string("NaN guidance: ") + edgediff_last_error(pipe));
    request.guidance = edgediff_request_defaults().guidance;
    request.prompt = nullptr;
    status = edgediff_generate(pipe, &request, &image);
    expect(status == EDGEDIFF_ERROR_INVALID_ARGUMENT && mentions(edgediff_last_error(pipe), "prompt"),
           std::string("NULL prompt: ") + edgediff_last_error(pipe));
    request.prompt = "a red circle";
    status = edgediff_generate(nullptr, &request, &image);
    expect(status == EDGEDIFF_ERROR_INVALID_ARGUMENT && mentions(edgediff_last_error(nullptr), "NULL"),
           "NULL handle");

    Counter counter{0, 2};  // the shipped bundle makes 2 steps: cancel at the last
    request.progress = count_and_cancel;
    request.progress_user = &counter;
    status = edgediff_generate(pipe, &request, &image);
    expect(status == EDGEDIFF_ERROR_CANCELLED && counter.calls == 2 && image.pixels == nullptr &&
               mentions(edgediff_last_error(pipe), "cancelled"),
           std::string("cancel at step 2: ") + edgediff_last_error(pipe));
    counter = Counter{0, 1000};
    status = edgediff_generate(pipe, &request, &image);
    expect(status == EDGEDIFF_OK && counter.calls == counter.steps && counter.steps > 0 &&
               *edgediff_last_error(pipe) == '\0',
           "progress reaches the last step and the handle works after a cancel");
    edgediff_image_free(&image);
    edgediff_close(pipe);

    try {
        edgediff::Pipeline bad("/no/such/bundle");
        expect(false, "C++: a missing bundle throws");
    } catch (const edgediff::Error &e) {
        expect(e.status() == EDGEDIFF_ERROR_BUNDLE && mentions(e.what(), "does not exist"),
               std::string("C++: a missing bundle throws: ") + e.what());
    }
    return failures ? 1 : 0;
}

std::vector<edgediff::Image> make(edgediff::Pipeline &pipeline, const char *prompt, int seed) {
    edgediff::Request request;
    request.prompt = prompt;
    request.seed = seed;
    request.count = 2;
    return pipeline.generate(request);
}

int threads(char **argv) {
    edgediff::Pipeline first(argv[2]), second(argv[2]);
    auto a = make(first, "a big red circle on the left", 1);
    auto b = make(second, "a small blue square at the top", 2);
    std::vector<edgediff::Image> ta, tb, tc;
    std::thread one([&] { ta = make(first, "a big red circle on the left", 1); });
    std::thread two([&] { tb = make(second, "a small blue square at the top", 2); });
    std::thread three([&] { tc = make(first, "a small blue square at the top", 2); });  // shared handle
    one.join();
    two.join();
    three.join();
    auto same = [](const std::vector<edgediff::Image> &x, const std::vector<edgediff::Image> &y) {
        if (x.size() != y.size()) return false;
        for (size_t i = 0; i < x.size(); ++i)
            if (x[i].pixels() != y[i].pixels()) return false;
        return true;
    };
    expect(same(a, ta) && same(b, tb) && same(b, tc), "three threads at once == one after another");
    return failures ? 1 : 0;
}

// One line per source of defaults, "NAME steps S guidance G seed N count C height H width W",
// for tests/test_capi.py to compare with edgediff.runtime.request.
void print_defaults(const char *name, int steps, float guidance, std::uint64_t seed, int count,
                    int height, int width) {
    std::cout << name << " steps " << steps << " guidance " << std::setprecision(9) << guidance
              << " seed " << seed << " count " << count << " height " << height << " width "
              << width << "\n";
}

struct Seen {
    int steps = 0;
};

int record_steps(void *user, int, int steps) {
    static_cast<Seen *>(user)->steps = steps;
    return 0;
}

int defaults(char **argv) {
    edgediff_request c = edgediff_request_defaults();
    print_defaults("c", c.steps, c.guidance, c.seed, c.count, c.height, c.width);
    edgediff::Request cpp;
    print_defaults("cpp", cpp.steps, cpp.guidance, cpp.seed, cpp.count, cpp.height, cpp.width);
    // 0 asks the library for its default; what it ran shows which default it took.
    edgediff_pipeline *pipe = open_or_die(argv[2]);
    Seen seen;
    c.prompt = "a big red circle on the left";
    c.steps = 0;
    c.count = 0;
    c.progress = record_steps;
    c.progress_user = &seen;
    edgediff_image image;
    if (edgediff_generate(pipe, &c, &image) != EDGEDIFF_OK) {
        std::cerr << "generate failed: " << edgediff_last_error(pipe) << "\n";
        return 1;
    }
    std::cout << "zero steps " << seen.steps << " count " << image.count << "\n";
    edgediff_image_free(&image);
    edgediff_close(pipe);
    return 0;
}

int time_it(char **argv) {
    edgediff::Pipeline pipeline(argv[2]);
    int runs = std::atoi(argv[3]);
    edgediff::Request request;
    request.prompt = "a big red circle on the left";
    pipeline.generate(request);  // warm-up
    std::vector<double> seconds;
    for (int i = 0; i < runs; ++i) {
        auto start = std::chrono::steady_clock::now();
        pipeline.generate(request);
        seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    for (double s : seconds) std::cout << s << "\n";
    return 0;
}

}  // namespace

// edit BUNDLE OUT PROMPT SEED IMAGE.rgb HEIGHT WIDTH STRENGTH [MASK.l8]: one edit through the C++
// wrapper, its pixels written to OUT.
int edit(int argc, char **argv) {
    auto read = [](const char *path) {
        std::ifstream in(path, std::ios::binary);
        return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
    };
    int height = std::atoi(argv[7]), width = std::atoi(argv[8]);
    edgediff::Request request;
    request.prompt = argv[4];
    request.seed = std::strtoull(argv[5], nullptr, 10);
    request.image = edgediff::Image(width, height, read(argv[6]));
    request.strength = float(std::atof(argv[9]));
    if (argc > 10) request.mask = read(argv[10]);
    try {
        edgediff::Pipeline pipeline(argv[2]);
        auto images = pipeline.generate(request);
        std::ofstream(argv[3], std::ios::binary)
            .write(reinterpret_cast<const char *>(images[0].data()), std::streamsize(images[0].size()));
        std::cout << images[0].height() << " " << images[0].width() << "\n";
    } catch (const edgediff::Error &e) {
        std::cerr << "status " << e.status() << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "pixels" && (argc == 8 || argc == 9)) return pixels(argc, argv);
    if (mode == "errors" && argc == 4) return errors(argv);
    if (mode == "threads" && argc == 3) return threads(argv);
    if (mode == "time" && argc == 4) return time_it(argv);
    if (mode == "defaults" && argc == 3) return defaults(argv);
    if (mode == "edit" && (argc == 10 || argc == 11)) return edit(argc, argv);
    std::cerr << "usage: see the top of tests/capi/capi_test.cpp\n";
    return 2;
}
