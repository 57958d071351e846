# apeserve image: the server with the embedded default model.
#
#   docker build -t apeserve .
#   docker run --rm -p 50051:50051 -v apeserve-data:/data apeserve
#   docker run --rm --gpus all -p 50051:50051 -v apeserve-data:/data apeserve   # on a GPU host
#
# The build stage runs the same deploy/setup.sh as a developer machine. The runtime
# stage keeps the Python environment at the same path, because the binaries' run path
# points into it (libtorch and the CUDA runtime of the torch wheel).

FROM debian:bookworm AS build
ENV APESERVE_HOME=/opt/apeserve DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY deploy/ deploy/
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates python3 \
    && ./deploy/setup.sh \
    && rm -rf /root/.cache/pip /var/lib/apt/lists/*
COPY . .
RUN cmake --preset default -DAPESERVE_BUILD_TESTS=OFF \
    && cmake --build --preset default -j"$(nproc)" --target apeserve apectl

FROM debian:bookworm-slim
ENV APESERVE_HOME=/opt/apeserve DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      python3 libgrpc++1.51 libprotobuf32 librocksdb7.8 libspdlog1.10 libabsl20220623 libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/apeserve/venv /opt/apeserve/venv
COPY --from=build /opt/apeserve/models /opt/apeserve/models
COPY --from=build /src/build/default/server/apeserve /src/build/default/tools/apectl /usr/local/bin/
RUN useradd --system --create-home apeserve && mkdir -p /data && chown apeserve /data
USER apeserve
VOLUME /data
EXPOSE 50051
ENTRYPOINT ["apeserve", "--model=/opt/apeserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", \
            "--data_dir=/data", "--listen=0.0.0.0:50051"]
