#!/bin/sh
# The server image's entrypoint: check the machine, then serve the image's model repository.
#
# `wan-triton serve` writes every model's config.pbtxt for the machine it runs on (GPU or CPU
# instances, limits, batching) into the repository it serves. The image's repository stays read-only,
# so serve gets a writable folder whose models link to the image's version folders (model.py and the
# exported, verified graphs). Those graphs must be current for the mounted checkpoint: a stale
# manifest would mean re-exporting into read-only folders, which fails; rebuild the image instead.
# Arguments go to `wan-triton serve` (default: --checkpoint /checkpoint).
set -eu

image_repository=${WAN_TRITON_IMAGE_REPOSITORY:-/opt/wan-triton/model_repository}
served=${WAN_TRITON_SERVED_REPOSITORY:-/tmp/wan-triton/model_repository}

wan-triton doctor

rm -rf "$served"
mkdir -p "$served"
for model in "$image_repository"/*/; do
    name=$(basename "$model")
    mkdir "$served/$name"
    for version in "$model"*/; do
        ln -s "${version%/}" "$served/$name/$(basename "$version")"
    done
done

exec wan-triton serve --repository "$served" "$@"
