from flask import Flask, jsonify
import requests

app = Flask(__name__)

@app.route('/api/data')
def get_data():
    # ⭐ Обычный HTTP call - БЕЗ трассировки!
    response = requests.get('http://database:8080/query')
    return jsonify({
        'message': 'Backend response',
        'database_data': response.json()
    })

if __name__ == '__main__':
    app.run(host='0.0.0.0', port=8080)
