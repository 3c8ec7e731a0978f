# The bcmanager image that deploy/k8s names: the manager by default (`bcmanager serve`), and the
# agent with `bcmanager agent`. Build from the repository root:
#   docker build -t bcmanager:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install '.[agent]' && rm -rf /build
COPY deploy/dorado-batch.sh /usr/local/bin/dorado-batch

RUN useradd --system --uid 10001 --user-group --create-home bcmanager
USER 10001
WORKDIR /home/bcmanager

# Inside a container the manager listens on every interface of the pod or container.
ENV BCM_HOST=0.0.0.0
EXPOSE 40765
CMD ["bcmanager", "serve"]
