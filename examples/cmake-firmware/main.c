/* Classify 16 real MNIST digits with the model edgecomp compiled at build time (CMakeLists.txt).
 * Prints one line per digit and exits 0 when at least 15 of 16 are right. */
#include <stdio.h>

#include "digits.h"
#include "mnist_8.h"

int main(void)
{
    static float input[784];
    static float scores[10];
    int correct = 0;
    for (int n = 0; n < DIGIT_COUNT; ++n) {
        for (int i = 0; i < 784; ++i) {
            input[i] = (float)digit_pixels[n][i];
        }
        mnist_8_invoke_float(input, scores);
        int best = 0;
        for (int k = 1; k < 10; ++k) {
            if (scores[k] > scores[best]) {
                best = k;
            }
        }
        correct += best == digit_labels[n];
        printf("digit %2d: predicted %d, label %d\n", n, best, digit_labels[n]);
    }
    printf("%d of %d correct (tensor arena %d bytes)\n", correct, DIGIT_COUNT, MNIST_8_ARENA_BYTES);
    return correct >= 15 ? 0 : 1;
}
