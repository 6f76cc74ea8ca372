package main

import (
    "encoding/json"
    "net/http"
)

func queryHandler(w http.ResponseWriter, r *http.Request) {
    data := map[string]string{
        "message": "Data from database",
        "records": "42",
    }
    json.NewEncoder(w).Encode(data)
}

func main() {
    http.HandleFunc("/query", queryHandler)
    http.ListenAndServe(":8080", nil)
}
