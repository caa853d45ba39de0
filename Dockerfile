# The securechat relay in a container (docs/operations.rst, "Service files").
#   docker build -t securechat .
#   docker run -d -p 6697:6697 -v securechat-data:/var/lib/securechat securechat
# It runs as its own unprivileged user, keeps everything in the volume, and reports
# its health through /health on the operator port inside the container.
FROM python:3.11-slim

RUN useradd --system --user-group --home-dir /var/lib/securechat --create-home securechat
COPY . /tmp/securechat
RUN python -m venv /opt/securechat/venv \
    && /opt/securechat/venv/bin/pip install --no-cache-dir /tmp/securechat \
    && install -d -m 0755 /etc/securechat \
    && install -m 0644 /tmp/securechat/etc/container.ini /etc/securechat/securechat.ini \
    && rm -rf /tmp/securechat

USER securechat
WORKDIR /var/lib/securechat
VOLUME ["/var/lib/securechat"]
EXPOSE 6697
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["/opt/securechat/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9797/health', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/securechat/venv/bin/twistd", "--nodaemon", "--pidfile=", "securechat"]
CMD ["--config", "/etc/securechat/securechat.ini"]
