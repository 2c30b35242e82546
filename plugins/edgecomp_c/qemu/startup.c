/* Minimal Cortex-M4 startup for QEMU's mps2-an386: vector table, FPU on, then newlib's _start
 * (rdimon crt0: zeroes .bss, opens the semihosting streams, calls main, exits via semihosting). */
#include <stdint.h>

extern void _start(void);
extern uint32_t __stack_top;

void ec_reset_handler(void);
void ec_fault_handler(void);

void ec_reset_handler(void)
{
    /* CPACR: full access to CP10/CP11 (the FPU), for code built with -mfloat-abi=hard/softfp */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm__ volatile("dsb\n isb");
    _start();
    for (;;) {
    }
}

void ec_fault_handler(void)
{
    /* semihosting SYS_EXIT with ADP_Stopped_RunTimeErrorUnknown: QEMU exits with status 1 */
    register uint32_t op __asm__("r0") = 0x18u;
    register uint32_t arg __asm__("r1") = 0x20023u;
    __asm__ volatile("bkpt 0xab" : : "r"(op), "r"(arg) : "memory");
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static const void *const ec_vectors[16] = {
    &__stack_top, (const void *)ec_reset_handler, (const void *)ec_fault_handler, (const void *)ec_fault_handler,
    (const void *)ec_fault_handler, (const void *)ec_fault_handler, (const void *)ec_fault_handler, 0, 0, 0, 0,
    (const void *)ec_fault_handler, (const void *)ec_fault_handler, 0, (const void *)ec_fault_handler,
    (const void *)ec_fault_handler,
};
