// Every op's element functions: what the CUDA kernels and the serial
// CUDA-logic backend include.
#pragma once

#include "align.h"
#include "box_derivative.h"
#include "pool.h"
#include "position_sensitive.h"
#include "precise.h"
#include "pyramid.h"
#include "rotated.h"
