# A CPU image that serves one transferkit run folder or exported ONNX file (mounted at /model).
#
#   docker build -t transferkit-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/pets:/model:ro" transferkit-serve
#   docker run --rm -p 8000:8000 -v "$PWD/export:/model:ro" transferkit-serve /model/pets.onnx --host 0.0.0.0
#
# torch and torchvision come from PyTorch's CPU index together (never mix a +cpu torch with PyPI's torchvision),
# at the versions constraints.txt pins; everything else from PyPI.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY src ./src
RUN pip install -c constraints.txt --index-url "$TORCH_INDEX" torch torchvision \
 && pip install -c constraints.txt . \
 && useradd --create-home --uid 10001 serve

USER serve
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["transferkit", "serve"]
CMD ["/model", "--host", "0.0.0.0", "--port", "8000"]
