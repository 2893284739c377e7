# The d3s app. Build: docker build -t d3s .   Run: docker run -p 7860:7860 d3s
# (add --gpus all and -e D3S_MODEL=CompVis/stable-diffusion-v1-4 for real weights on a GPU host; mount data and
# name it with -e D3S_DATA=/data/d3s, results with -e D3S_RESULTS=/data/results). SECURITY.md: what it allows.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 user

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt  # the runtime set, as a Space installs it (no test tools)
COPY . .
RUN pip install --no-cache-dir --no-deps -e .

# The app runs as an ordinary user (uid 1000, as Hugging Face Spaces expect): the code is root's and read-only to it;
# what it writes (the WordNet copy for nltk, the tiny preset, caches, the review store) lives in its home.
USER user
ENV HOME=/home/user NLTK_DATA=/home/user/nltk_data
RUN python -m d3s.wordnet_data && mkdir -p /home/user/data

# Inside the container only, listen on all interfaces so `docker run -p` can reach the app. Listening beyond
# 127.0.0.1 makes the app public: the safety checker is on, and there is no Review tab unless reviewers sign in
# (-e D3S_REVIEW_AUTH=/run/secrets/reviewers, one name:password per line).
ENV GRADIO_ANALYTICS_ENABLED=False D3S_HOST=0.0.0.0 D3S_PORT=7860 D3S_REVIEWS=/home/user/data/reviews.sqlite
EXPOSE 7860
CMD ["python", "app.py"]
