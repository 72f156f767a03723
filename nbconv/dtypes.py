"""The dtype rules of conv3d: which precision to compute in and which dtype to return."""
import numpy as np


def conv_dtypes(*dtypes):
    """-> (compute dtype, result dtype). float32/float64 natively, mixed inputs by np.result_type,
    float16 computed in float32 and returned as float16, integers and bools in float64."""
    for name, dtype in dtypes:
        check_real(name, dtype)
        if dtype.kind == "f" and dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name} has dtype {dtype}; conv3d computes in float16, float32 or float64")
    result = np.result_type(*(dtype for _, dtype in dtypes))
    if result.kind in "biu":
        return np.dtype(np.float64), np.dtype(np.float64)
    if result == np.float16:
        return np.dtype(np.float32), result
    return result, result


def check_real(name, dtype):
    """TypeError naming `name` unless `dtype` holds real numbers (bools and integers too)."""
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real; complex dtype {dtype} is not supported")
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric dtype, got {dtype}")
