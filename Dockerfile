# The d3s app. Build: docker build -t d3s .   Run: docker run -p 7860:7860 d3s
# (add --gpus all and -e D3S_MODEL=CompVis/stable-diffusion-v1-4 for real weights on a GPU host)
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps -e . && python -m d3s.wordnet_data

# Inside the container only, listen on all interfaces so `docker run -p` can reach the app.
ENV GRADIO_ANALYTICS_ENABLED=False D3S_HOST=0.0.0.0 D3S_PORT=7860
EXPOSE 7860
CMD ["python", "app.py"]
