#!/bin/sh
# Build the shared stages, then one image per service, from the repository root.
#   deploy/build-images.sh [TAG]          (TAG defaults to local; needs Docker with BuildKit)
set -eu
cd "$(dirname "$0")/.."
tag="${1:-local}"
registry="${NEOBATCH_REGISTRY:-neobatch}"
docker build -f deploy/docker/base.Dockerfile --target builder -t "neobatch-builder:$tag" .
docker build -f deploy/docker/base.Dockerfile --target runtime -t "neobatch-runtime:$tag" .
for service in console planner resource-manager runtime-agent notifier; do
  docker build -f "deploy/docker/$service.Dockerfile" \
    --build-arg "BUILDER_IMAGE=neobatch-builder:$tag" \
    --build-arg "RUNTIME_IMAGE=neobatch-runtime:$tag" \
    -t "$registry/$service:$tag" .
done
