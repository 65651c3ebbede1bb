/*
 * imageward-helper: a tiny static executable for images that have no shell.
 *
 *   imageward-helper copy DEST   copy this executable to DEST (mode 0755) and exit
 *   imageward-helper [ANY...]    print "imageward-helper: ok" and exit 0
 *
 * PrePull's Images mode copies it into an emptyDir once, then runs it as the command of
 * every pre-pull init container: the kubelet pulls the image, the helper exits at once,
 * so scratch and distroless images pre-pull too. The tests also put it into a scratch image.
 * Static, no libc beyond what -static links, so it runs in any image of the same arch.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int copy_self(const char *dest) {
    char buffer[65536];
    int in = open("/proc/self/exe", O_RDONLY);
    if (in < 0) {
        perror("imageward-helper: open /proc/self/exe");
        return 1;
    }
    int out = open(dest, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (out < 0) {
        perror("imageward-helper: open destination");
        close(in);
        return 1;
    }
    ssize_t n;
    while ((n = read(in, buffer, sizeof buffer)) > 0) {
        if (write(out, buffer, (size_t)n) != n) {
            perror("imageward-helper: write");
            close(in);
            close(out);
            return 1;
        }
    }
    close(in);
    if (n < 0 || close(out) != 0) {
        perror("imageward-helper: copy");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "copy") == 0) {
        return copy_self(argv[2]);
    }
    puts("imageward-helper: ok");
    return 0;
}
