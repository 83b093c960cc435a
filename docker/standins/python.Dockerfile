# A local stand-in for python:3.11-slim where no registry serves it (tests/docker_harness.py):
# the debootstrap base plus Debian's Python 3.11 and pip, laid out as the official image is
# (python and pip on the PATH, pip free to install system-wide).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip
# The machine's certificate authorities (a proxy may sign the registries' certificates), after
# apt: installing ca-certificates rewrites the bundle.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
