"""Analytics: windowed KPIs of the events topic (faust-streaming), as JSON, metrics and a page."""
