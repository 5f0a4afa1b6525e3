#!/usr/bin/env bash
# Serve the exported U-Net with TensorFlow Serving: natively when tensorflow_model_server
# is on PATH, otherwise print the equivalent `docker run` command. SERVER='unet-keras serve'
# runs the local server instead, with the same flags.
#
# Usage: serving/launch.sh [--print] [BASE_PATH]
#   BASE_PATH  directory holding numbered SavedModel versions (BASE_PATH/1/, ...);
#              default: exports/unet under the repository root
#   --print    print the command instead of running it
# Environment:
#   GRPC_PORT (8500), REST_PORT (8501)   ports on this host
#   GRPC_MAX_THREADS (16)                gRPC request threads
#   ENABLE_BATCHING (0)                  1 turns server-side batching on (fixed-size
#                                        tiles only; see batching.config)
#   TF_SERVING_IMAGE (tensorflow/serving:2.20.0)   image for the Docker command
#   SERVER (tensorflow_model_server)     the server command run natively when on PATH
set -euo pipefail

readonly MODEL_NAME=unet
readonly CONTAINER_BASE=/models/unet
readonly CONTAINER_CONFIG=/config
readonly CONTAINER_GRPC_PORT=8500
readonly CONTAINER_REST_PORT=8501

usage() {
    sed -n '6,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    printf 'launch.sh: %s\n' "$1" >&2
    exit 2
}

# Print a command quoted so that it can be pasted into a shell: the first $1 words on
# one line, then one argument per line.
print_command() {
    local head=$1 arg
    shift
    printf '%q' "$1"
    shift
    for arg in "${@:1:head-1}"; do
        printf ' %q' "$arg"
    done
    for arg in "${@:head}"; do
        printf ' \\\n    %q' "$arg"
    done
    printf '\n'
}

# Flags shared by every way of starting the server; $1 is models.config, $2 the directory
# of the other config files, $3 and $4 the gRPC and REST ports as the server sees them.
server_flags() {
    flags=(
        "--port=$3"
        "--rest_api_port=$4"
        "--model_config_file=$1"
        # Pick up edits to models.config (e.g. version labels) without a restart.
        "--model_config_file_poll_wait_seconds=60"
        # New versions appear within seconds of the export's rename.
        "--file_system_poll_wait_seconds=5"
        "--monitoring_config_file=$2/monitoring.config"
        "--grpc_max_threads=$GRPC_MAX_THREADS"
        # Lets gRPC clients and probes use the standard grpc.health.v1 service.
        "--enable_grpc_healthcheck_service=true"
    )
    if [[ $ENABLE_BATCHING != 0 ]]; then
        flags+=("--enable_batching=true" "--batching_parameters_file=$2/batching.config")
    fi
}

print_only=0
base=""
while (($# > 0)); do
    case "$1" in
        --print) print_only=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [[ -z $base ]] || die "only one BASE_PATH may be given"
            base=$1
            ;;
    esac
    shift
done

GRPC_PORT=${GRPC_PORT:-8500}
REST_PORT=${REST_PORT:-8501}
GRPC_MAX_THREADS=${GRPC_MAX_THREADS:-16}
ENABLE_BATCHING=${ENABLE_BATCHING:-0}
TF_SERVING_IMAGE=${TF_SERVING_IMAGE:-tensorflow/serving:2.20.0}
for number in "$GRPC_PORT" "$REST_PORT" "$GRPC_MAX_THREADS"; do
    [[ $number =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: '$number'"
done

script=${BASH_SOURCE[0]}
[[ $script == */* ]] || script=./$script
serving_dir=$(cd -- "${script%/*}" && pwd -P)
repo_root=${serving_dir%/*}

if [[ -z $base ]]; then
    base=$repo_root/exports/unet
elif [[ $base != /* ]]; then
    base=$PWD/$base
fi
while [[ $base == */ && $base != / ]]; do
    base=${base%/}
done
# Resolve what exists already; the export may not have created BASE_PATH yet.
if [[ -d $base ]]; then
    base=$(cd -- "$base" && pwd -P)
elif [[ -d ${base%/*}/ ]]; then
    parent=$(cd -- "${base%/*}/" && pwd -P)
    base=${parent%/}/${base##*/}
fi
# The path ends up inside a quoted text-format string and a docker -v spec.
[[ $base != *[\"\\:$'\n']* ]] || die "BASE_PATH must not contain '\"', '\\', ':' or newlines"

shopt -s nullglob
versions=("$base"/[0-9]*/)
shopt -u nullglob
if ((${#versions[@]} == 0)); then
    printf 'launch.sh: warning: %s has no numbered version yet; %s\n' "$base" \
        "the server opens its ports only once the first export has been loaded" >&2
fi

read -r -a server_words <<<"${SERVER:-tensorflow_model_server}"
((${#server_words[@]} > 0)) || die "SERVER is empty"
if server=$(command -v "${server_words[0]}"); then
    # models.config names the container path; point a private copy at BASE_PATH (made even
    # for --print, so that the printed command works). Edits to serving/models.config
    # reach this server only through a new launch.
    models_config=$(mktemp "${TMPDIR:-/tmp}/unet-models.XXXXXX.config")
    config=$(<"$serving_dir/models.config")
    printf '%s\n' "${config//\"$CONTAINER_BASE\"/\"$base\"}" >"$models_config"
    server_flags "$models_config" "$serving_dir" "$GRPC_PORT" "$REST_PORT"
    command=("$server" "${server_words[@]:1}" "${flags[@]}")
    if ((print_only)); then
        print_command "${#server_words[@]}" "${command[@]}"
        exit 0
    fi
    printf 'launch.sh: serving %s from %s (gRPC :%s, REST :%s)\n' \
        "$MODEL_NAME" "$base" "$GRPC_PORT" "$REST_PORT" >&2
    exec "${command[@]}"
fi

server_flags "$CONTAINER_CONFIG/models.config" "$CONTAINER_CONFIG" \
    "$CONTAINER_GRPC_PORT" "$CONTAINER_REST_PORT"
command=(
    docker run --rm
    "--publish=$GRPC_PORT:$CONTAINER_GRPC_PORT"
    "--publish=$REST_PORT:$CONTAINER_REST_PORT"
    "--volume=$base:$CONTAINER_BASE:ro"
    "--volume=$serving_dir:$CONTAINER_CONFIG:ro"
    "--entrypoint=tensorflow_model_server"
    "$TF_SERVING_IMAGE"
    "${flags[@]}"
)
if ((!print_only)); then
    printf 'launch.sh: %s is not on PATH; run it in Docker with:\n' "${server_words[0]}" >&2
fi
print_command 3 "${command[@]}"
