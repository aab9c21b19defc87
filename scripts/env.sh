# Source this file: prepares libtorch (cached) and exports LIBTORCH and
# LD_LIBRARY_PATH for building and running llmos.
_llmos_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$_llmos_root/scripts/setup-libtorch.sh" | sed 's/^/export /')"
export LD_LIBRARY_PATH="$LLMOS_TORCH_LD_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
