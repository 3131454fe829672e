# sanitize on an official PyTorch CUDA runtime image; the entry point is the CLI.
#   docker build -t sanitize .
#   docker run --gpus all -v "$PWD/data:/data:ro" -v "$PWD/clean:/clean:ro" -v "$PWD/out:/out" \
#       sanitize ct /data --reserve /clean --out /out/cleaned
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/sanitize
COPY pyproject.toml README.md ./
COPY sanitize ./sanitize
RUN pip install --no-cache-dir .

ENTRYPOINT ["sanitize"]
CMD ["--help"]
