/*
** bench/pad.c — AME_BENCH_PAD bytes of code, linked between a benchmark's
** own objects and the STM library it is linked with statically, so that
** the same benchmark runs with the library's code at several distances
** from its own (bench/meson.build, stm_bench.py's placements).
*/
#define AME_BENCH_STR_(x) #x
#define AME_BENCH_STR(x) AME_BENCH_STR_(x)

__asm__(".text\n\t.skip " AME_BENCH_STR(AME_BENCH_PAD) "\n");
