# nemo_smartpt on the NGC NeMo Framework container (cluster image).
# The container already holds torch, megatron-core, megatron-bridge, Transformer Engine, Apex and mamba-ssm built
# for its CUDA, so the package goes in with --no-deps: nothing of the stack is replaced.
#
#   docker build -t nemo_smartpt:latest .
#   enroot import -o nemo_smartpt.sqsh dockerd://nemo_smartpt:latest     # for Slurm + pyxis
#
# Pick a newer 26.xx tag with --build-arg NEMO_IMAGE=... ; it must ship megatron-core >= 0.19 / megatron-bridge >= 0.6.
ARG NEMO_IMAGE=nvcr.io/nvidia/nemo:26.02

FROM ${NEMO_IMAGE} AS runtime
WORKDIR /opt/nemo_smartpt
COPY pyproject.toml README.md ./
COPY nemo_smartpt ./nemo_smartpt
COPY conf ./conf
COPY examples ./examples
RUN pip install --no-deps --no-build-isolation -e . \
    && smartpt --help
CMD ["smartpt", "--help"]
