// generate "PROMPT" [OUT.ppm] [--bundle DIR] [--steps N] [--seed N]: one image, as a PPM file.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "edgediff.hpp"

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: generate PROMPT [OUT.ppm] [--bundle DIR] [--steps N] [--seed N]\n";
        return 2;
    }
    edgediff::Request request;
    request.prompt = argv[1];
    std::string out = "image.ppm", bundle;
    for (int i = 2; i < argc; ++i) {
        std::string arg = argv[i];
        bool has_value = i + 1 < argc;
        if (arg == "--bundle" && has_value) bundle = argv[++i];
        else if (arg == "--steps" && has_value) request.steps = std::atoi(argv[++i]);
        else if (arg == "--seed" && has_value) request.seed = std::strtoull(argv[++i], nullptr, 10);
        else out = arg;
    }
    try {
        edgediff::Pipeline pipeline(bundle);
        request.progress = [](int step, int steps) {
            std::cerr << "\rstep " << step << "/" << steps << std::flush;
            return true;
        };
        edgediff::Image image = pipeline.generate(request).at(0);
        std::ofstream file(out, std::ios::binary);
        file << "P6\n" << image.width() << " " << image.height() << "\n255\n";
        file.write(reinterpret_cast<const char *>(image.data()), std::streamsize(image.size()));
        std::cerr << "\nwrote " << out << " (" << image.width() << "x" << image.height()
                  << ", edgediff " << edgediff::version() << ")\n";
    } catch (const edgediff::Error &e) {
        std::cerr << "error " << e.status() << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}
