# syntax=docker/dockerfile:1
# The services' images, CPU builds: one target per role, each holding only that role's
# dependencies (pyproject.toml's extras); GPU generators use Dockerfile.cuda.
#   docker build --target storage -t imagegen-storage .     # gateway, scheduler, generator,
#   docker run imagegen-storage services.storage            # postprocess, storage
# The entrypoint is `python -m`; each target's CMD runs its service. The storage image also
# runs `imagegen storage cleanup` / `imagegen storage lifecycle apply` (the CronJob).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY imagegen ./imagegen
COPY services ./services

# The project (a regular, non-editable install) with one role's extra. hadolint's DL3013
# (pin versions) misreads the local project as a package; its dependencies are pinned in
# pyproject.toml.
FROM build AS build-gateway
# hadolint ignore=DL3013
RUN pip install ".[gateway]"

FROM build AS build-scheduler
# hadolint ignore=DL3013
RUN pip install ".[scheduler]"

FROM build AS build-postprocess
# hadolint ignore=DL3013
RUN pip install ".[postprocess]"

FROM build AS build-storage
# hadolint ignore=DL3013
RUN pip install ".[storage]"

FROM build AS build-analytics
# hadolint ignore=DL3013
RUN pip install ".[analytics]"

# The image-safety model (imagegen/safety.py): nsfwjs's npm package (MIT, weights inside),
# unpacked by npm in a throwaway Node stage; only its model files reach postprocess and the
# gateway, where IMAGEGEN_SAFETY_MODEL_DIR points at them.
FROM node:22-bookworm-slim AS safety-model
ARG NSFWJS_VERSION=4.4.0
WORKDIR /model
RUN npm pack --silent "nsfwjs@${NSFWJS_VERSION}" \
    && tar -xzf "nsfwjs-${NSFWJS_VERSION}.tgz" package/package.json package/LICENSE \
        package/dist/models/mobilenet_v2 \
    && rm "nsfwjs-${NSFWJS_VERSION}.tgz"

# torch first, from the CPU wheel index: the project pins torch==2.13.0, and resolving it
# from the default index would pull gigabytes of CUDA packages into a CPU image. Then the
# demo backend's DCGAN weights without their own dependencies (torchvision), as ./dev does.
FROM build AS build-generator
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
# hadolint ignore=DL3013
RUN pip install ".[generator]" && pip install --no-deps gan-face-generate==1.1.1

FROM ${PYTHON_IMAGE} AS runtime
# Byte code is compiled at install time; the root filesystem is read-only in Kubernetes,
# so caches go to /tmp (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface
RUN groupadd --system --gid 10001 imagegen \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin imagegen
ENTRYPOINT ["python", "-m"]

# 8081: a worker's /healthz, /readyz, /metrics.
FROM runtime AS scheduler
COPY --from=build-scheduler /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8081
CMD ["services.scheduler"]

FROM runtime AS postprocess
COPY --from=build-postprocess /opt/venv /opt/venv
COPY --from=safety-model /model/package /opt/nsfwjs
ENV IMAGEGEN_SAFETY_MODEL_DIR=/opt/nsfwjs
USER 10001:10001
EXPOSE 8081
CMD ["services.postprocess"]

FROM runtime AS storage
COPY --from=build-storage /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8081
CMD ["services.storage"]

# 8010: the analytics API, page and /metrics.
FROM runtime AS analytics
COPY --from=build-analytics /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8010
CMD ["services.analytics"]

FROM runtime AS generator
COPY --from=build-generator /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8081
CMD ["services.generator"]

# Last, so a plain `docker build .` gives the gateway. 8000: its HTTP.
FROM runtime AS gateway
COPY --from=build-gateway /opt/venv /opt/venv
COPY --from=safety-model /model/package /opt/nsfwjs
ENV IMAGEGEN_SAFETY_MODEL_DIR=/opt/nsfwjs
USER 10001:10001
EXPOSE 8000 8081
CMD ["services.gateway"]
