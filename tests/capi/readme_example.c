/* The README's C example, compiled as strict C99 (-pedantic -Werror) so the header stays C. */
#include <edgediff.h>
#include <stdio.h>

int main(void) {
    edgediff_pipeline *pipe;
    if (edgediff_open(NULL, NULL, &pipe) != EDGEDIFF_OK)   /* NULL: the shipped model */
        fprintf(stderr, "%s\n", edgediff_last_error(pipe)); /* a handle comes back even then */
    edgediff_request request = edgediff_request_defaults(); /* the bundle's steps and guidance, seed 0 */
    request.prompt = "a big red circle on the left";
    request.count = 2;
    edgediff_image images; /* count x height x width x 3 */
    int status = edgediff_generate(pipe, &request, &images);
    if (status == EDGEDIFF_OK) {
        printf("%d %d %d\n", images.count, images.height, images.width);
        edgediff_image_free(&images);
    } else {
        fprintf(stderr, "%s\n", edgediff_last_error(pipe));
    }
    edgediff_close(pipe);
    return status;
}
