// Every op's element functions: what the CUDA kernels and the serial
// CUDA-logic backend include.
#pragma once

#include "align.h"
#include "pool.h"
#include "position_sensitive.h"
#include "pyramid.h"
#include "rotated.h"
