# syntax=docker/dockerfile:1
# neobatch notifier (signed webhooks). Build from the repository root after the shared stages (base.Dockerfile):
#   docker build -f deploy/docker/notifier.Dockerfile -t neobatch/notifier:local .
ARG BUILDER_IMAGE=neobatch-builder:local
ARG RUNTIME_IMAGE=neobatch-runtime:local

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY libs/common /src/libs/common
COPY services/notifier /src/services/notifier
# Exactly this service's packages (uv sync removes the others), installed non-editable so
# the final image needs no sources.
RUN uv sync --frozen --no-dev --no-editable --package neobatch-notifier

FROM ${RUNTIME_IMAGE}
COPY --from=build /app/.venv /app/.venv
# Non-root (uid 10001 from the runtime stage); stated again so a different base cannot undo it.
USER 10001:10001
CMD ["python", "-m", "neobatch.notifier"]
