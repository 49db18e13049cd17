# medseg on a CUDA machine. The same set-up as `make run` / `make test`: the Makefile does it.
#   docker build -t medseg .
#   docker run --gpus all -p 7860:7860 medseg            # UI on http://localhost:7860
# Inside the container the server binds 0.0.0.0 (the container's own network namespace);
# publish the port to 127.0.0.1 on the host (-p 127.0.0.1:7860:7860) to keep it local.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-dev make git ca-certificates dicom3tools nodejs npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medseg
COPY pyproject.toml Makefile README.md ./
COPY scripts ./scripts
COPY app ./app
COPY models ./models
COPY adapters ./adapters
COPY data ./data
COPY evaluation ./evaluation
COPY samples ./samples
COPY weights/README.md ./weights/README.md

# venv + torch==2.14.1/torchvision==0.29.1 + the project + LiteMedSAM weights (sha256-verified)
RUN make setup PYTHON=python3

EXPOSE 7860
CMD ["make", "run", "HOST=0.0.0.0", "PORT=7860"]
