// Includes CMocka for C++ tests. Include it after every C++ standard header:
// cmocka.h has no extern "C" of its own, needs <stdarg.h>, <stddef.h> and
// <setjmp.h> first, and defines macros (fail, ...) that clash with libstdc++.
#pragma once

// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
extern "C" {
#include <cmocka.h>
}
// clang-format on
