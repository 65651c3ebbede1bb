/*
 * imageward-pause: the sandbox ("pause") container of the local cluster's real node.
 *
 * Nothing can be pulled from registry.k8s.io on the project machines, so the pause image
 * is built here from this file (static, no libc in the image) and imported into the real
 * node's containerd. It does what Kubernetes' own pause does: hold the pod's namespaces
 * while doing nothing, reap zombies (it is PID 1 when the pod shares its PID namespace),
 * and exit 0 on SIGINT or SIGTERM so a pod stops at once instead of after its grace period.
 *
 *   imageward-pause        pause until SIGINT/SIGTERM
 *   imageward-pause -v     print the version and exit
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "imageward-pause 1.0"

static void on_stop(int signum) {
    (void)signum;
    _exit(0);
}

static void on_child(int signum) {
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "-v") == 0) {
        puts(VERSION);
        return 0;
    }
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        perror("imageward-pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
