# sanitize on an official PyTorch CUDA runtime image; the entry point is the CLI.
#   docker build -t sanitize .
#   docker run --rm --gpus all -v "$PWD/data:/data:ro" -v "$PWD/clean:/clean:ro" -v "$PWD/out:/out" \
#       sanitize ct /data --reserve /clean --out /out/cleaned
# The image's PyTorch (with CUDA) satisfies the package's torch requirement, so pip adds only the
# small pure-Python dependencies. See docs/ci.md for the exit codes and docs/guide.md for the rest.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sanitize
COPY pyproject.toml README.md ./
COPY sanitize ./sanitize
RUN pip install --no-cache-dir "./.[pe]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin sanitize

# An unprivileged user (uid 10001). Mounted output folders must be writable by it, or pass
# --user "$(id -u):$(id -g)" to docker run to write as yourself.
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["sanitize"]
CMD ["--help"]
