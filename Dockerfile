# GPU image for dslim: CUDA PyTorch, DALI (GPU decoding with --data.decoder mixed) and DeepSpeed.
#   docker build -t dslim .
#   docker run --gpus all --ipc=host -v /data/imagenet:/data/imagenet -v $PWD/runs:/workspace/runs dslim
FROM pytorch/pytorch:2.9.1-cuda13.0-cudnn9-devel

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /workspace/dslim
COPY pyproject.toml README.md ./
COPY dslim ./dslim
COPY recipes ./recipes
RUN pip install ".[deepspeed]"

WORKDIR /workspace
CMD ["accelerate", "launch", "--multi_gpu", "-m", "dslim.train", "--recipe", "dsnet_mbv1", \
     "--data.root", "/data/imagenet", "--data.decoder", "mixed", "--out-dir", "runs/dsnet_mbv1"]
