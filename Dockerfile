# syntax=docker/dockerfile:1
# The services' image, CPU build: every service runs from it (the generator too, with the
# demo or a hosted backend; GPU generators use Dockerfile.cuda).
#   docker build -t imagegen .
#   docker run imagegen services.scheduler        # the entrypoint is `python -m`
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU wheel index: the project pins torch==2.13.0, and resolving it
# from the default index would pull gigabytes of CUDA packages into a CPU image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY imagegen ./imagegen
COPY services ./services
# The project (a regular, non-editable install), then the demo backend's DCGAN weights
# without their own dependencies (torchvision is not needed), as ./dev does.
RUN pip install . && pip install --no-deps gan-face-generate==1.1.1

FROM ${PYTHON_IMAGE}
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
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# 8000: the gateway's HTTP; 8081: a worker's /healthz, /readyz, /metrics.
EXPOSE 8000 8081
ENTRYPOINT ["python", "-m"]
CMD ["services.gateway"]
