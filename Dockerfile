# The image `laneway` that every pod of deploy/kubernetes/ runs (web, GPU and CPU workers, beat, the
# migrate Job); each manifest gives its own command. Build it with `docker build -t laneway .`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANEWAY_VAR_DIR=/var/lib/laneway \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app

# Dependencies first: a change to the code alone reuses this (large: torch) layer.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# collectstatic only reads the settings: a throwaway key, so none is generated into the image.
# The user's home is the per-process scratch the manifests mount (caches of Hugging Face and friends).
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/laneway --create-home laneway \
    && mkdir -p /media /models \
    && chown laneway:laneway /media /models

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000

# The web Deployment's command (deploy/kubernetes/web.yaml); the workers and beat give their own.
CMD ["uvicorn", "console.asgi:application", "--host=0.0.0.0", "--port=8000", "--no-access-log", "--proxy-headers", "--forwarded-allow-ips=*"]
