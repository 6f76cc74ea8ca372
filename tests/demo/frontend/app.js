const express = require("express");
const axios = require("axios");

const app = express();

app.get("/", async (req, res) => {
  try {
    // ⭐ Обычный HTTP call - БЕЗ трассировки в коде!
    const response = await axios.get("http://backend:8080/api/data");
    res.json({
      message: "Frontend response",
      backend_data: response.data,
    });
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

app.listen(3000, () => {
  console.log("Frontend running on port 3000");
});
